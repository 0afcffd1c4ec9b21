"""vebus deadletter service."""
