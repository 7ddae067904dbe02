"""AutoNorm: adaptive normalization for Vision Transformers (Hydra + PyTorch Lightning)."""

__version__ = "0.1.0"
