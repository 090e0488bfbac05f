"""The package version (a leaf: :mod:`ftlens`, the CLI and :func:`ftlens.io.versions` read it)."""

__version__ = "0.1.0"
