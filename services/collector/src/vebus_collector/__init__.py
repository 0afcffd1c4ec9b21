"""vebus collector service."""
