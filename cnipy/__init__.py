"""cnipy: a networking data-plane toolkit for container hosts."""

__version__ = "0.1.0"
