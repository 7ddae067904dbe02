"""Checkpoints written atomically: a crash mid-write never leaves a file that reads as valid."""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from autonorm.pipeline.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that saves to a temporary file in the same folder, then renames."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
        atomic_torch_save(checkpoint, path)
