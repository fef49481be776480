"""The package version, apart from `__init__` so that modules can import it without a cycle."""

__version__ = "0.1.0"
