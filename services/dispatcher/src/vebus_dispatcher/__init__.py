"""vebus dispatcher service."""
