"""tfx: a small, clear and fast Transformer translation trainer."""

__version__ = "0.1.0"
