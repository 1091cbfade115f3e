"""icg: Instance-level Consistent Graph (ICG) for person re-identification, in PyTorch Lightning."""

__version__ = "0.1.0"
