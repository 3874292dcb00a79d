"""bridgec's version: printed in every generated script's header (one fact, kept by the runtime)."""

from bridgec.runtime.version import __version__

__all__ = ["__version__"]
