"""Checkpoints written atomically (a crash mid-write never leaves a file that reads as valid) and
recording which run and data set they belong to."""

from __future__ import annotations

import os
from typing import Any, Optional

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from autonorm.pipeline.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that saves to a temporary file in the same folder, then renames."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
        atomic_torch_save(checkpoint, path)


class RunRecord(pl.Callback):
    """Writes ``checkpoint["autonorm"]`` into every checkpoint: the run's identity (see
    :mod:`autonorm.pipeline.identity`), its data set (``name``, ``num_classes``, ``classes``, the
    normalisation ``mean`` / ``std``) and the validation metrics current at the save (for
    ``best.ckpt``: those of the best epoch, which a resumed run reports)."""

    KEY = "autonorm"

    def __init__(self, identity: Optional[dict[str, Any]], data: dict[str, Any]) -> None:
        self.identity = identity
        self.data = data

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        checkpoint[self.KEY] = {"identity": self.identity, "data": self.data, "val_metrics": val}


def data_record(datamodule: Any) -> dict[str, Any]:
    """What a checkpoint records about its data set (a set-up :class:`~autonorm.data.ImageDataModule`)."""
    return {
        "name": datamodule.name,
        "num_classes": int(datamodule.num_classes),
        "classes": list(datamodule.classes),
        "mean": [float(v) for v in datamodule.mean],
        "std": [float(v) for v in datamodule.std],
    }
