"""vebus: the vSphere event bus (shared library)."""
