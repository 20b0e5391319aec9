"""The version of mtl, which its checkpoints and exports record."""

__version__ = "0.2.0"
