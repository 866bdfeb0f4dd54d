"""The package's version: one place, read by the root package and the command line."""
__version__ = "0.1.0"
