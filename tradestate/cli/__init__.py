"""The ``tradestate`` command line: one module per command family."""

from .main import app, main

__all__ = ["app", "main"]
