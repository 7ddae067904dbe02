"""AutoNorm: adaptive normalization for Vision Transformers (Hydra + PyTorch Lightning)."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree (``train.yaml``, ``eval.yaml`` and the config groups).
CONF_DIR = Path(__file__).resolve().parent / "conf"

# The norms' fast paths and inference forms (autonorm.norms asks for them, never imports them).
from . import kernels  # noqa: E402

__all__ = ["CONF_DIR", "__version__", "kernels"]
