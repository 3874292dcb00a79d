"""bridgec's version: printed in every generated script's header."""

__version__ = "0.1.0"
