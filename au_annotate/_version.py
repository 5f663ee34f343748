"""The package version, in a module of its own so that modules inside the package never import their parent."""

__version__ = "0.1.0"
