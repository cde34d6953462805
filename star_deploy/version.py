"""The package version, importable from any layer (the package root sits above them all)."""

__version__ = "0.1.0"
