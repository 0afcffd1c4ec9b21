"""vebus filter service."""
