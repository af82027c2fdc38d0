"""The package version (a leaf module: `harness` re-exports it, records read it without importing the package)."""

__version__ = "0.1.0"
