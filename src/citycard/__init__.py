"""citycard — one PBOC 3.0 bank chip card for a whole city."""

__version__ = "0.1.0"
