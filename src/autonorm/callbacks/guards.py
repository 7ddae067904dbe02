"""Stop training at the first non-finite loss, naming the step and the last good checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from autonorm.config import AutoNormError


class NonFiniteLossError(AutoNormError, RuntimeError):
    """The training loss (or, at a checkpoint, a weight) became NaN or infinite."""


def _checkpoint_step(path: Path) -> Optional[int]:
    """``global_step`` stored in a checkpoint file, or None if it cannot be read."""
    for mmap in (True, False):  # mmap: no need to read the whole file (zip-format checkpoints)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
            return int(ckpt.get("global_step"))
        except Exception:
            continue
    return None


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    """The newest checkpoint file on disk written by the trainer's checkpoint callbacks, with its step."""
    paths: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        for attr in ("last_model_path", "best_model_path"):
            p = getattr(cb, attr, None)
            if p and Path(p).is_file() and Path(p) not in paths:
                paths.append(Path(p))
    found = [(step, p) for p in paths if (step := _checkpoint_step(p)) is not None]
    if not found:
        return "none saved yet"
    step, path = max(found, key=lambda sp: (sp[0], sp[1].name == "last.ckpt"))
    return f"{path} (step {step})"


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in ``state`` holding a NaN or an infinity."""
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    ok = torch.stack([torch.isfinite(state[k]).all().to("cpu", non_blocking=True) for k in names])
    if bool(ok.all()):
        return []
    return [k for k, good in zip(names, ok.tolist()) if not good]


class NonFiniteLossGuard(pl.Callback):
    """A cheap check of the step's loss (no anomaly detection), and of the weights at each save.

    * Raises :class:`NonFiniteLossError` before the backward pass of the first step whose loss is
      NaN/inf, so that step's optimizer update never happens. The message names the step, the
      epoch and the newest checkpoint on disk (with its step).
    * Refuses to write a checkpoint whose weights hold a NaN/inf (an update with a finite loss can
      still overflow the weights): it raises the same error before the file is written, so the
      checkpoint on disk stays the last good one.
    """

    def __init__(self, checkpoint_dir: Optional[str] = None, check_weights_on_save: bool = True) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.check_weights_on_save = bool(check_weights_on_save)

    def _fail(self, trainer: pl.Trainer, what: str) -> None:
        raise NonFiniteLossError(
            f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}); stopping. "
            f"Last good checkpoint: {last_good_checkpoint(trainer)}. "
            "Try a lower optim.lr or enable gradient clipping (trainer.gradient_clip_val)."
        )

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            self._fail(trainer, f"training loss is {value}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.check_weights_on_save:
            return
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
            self._fail(trainer, f"weights became non-finite ({', '.join(bad[:5])}{more}); checkpoint not written")
