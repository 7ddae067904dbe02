"""Test accuracy against wall-clock training time: the time-to-accuracy curve of a recipe."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch


_IMPORTED_AT = time.monotonic()


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; elsewhere since this module's import),
    so that the curve can also be read against the job's whole wall time: interpreter start,
    imports, data loading, a cached phase built on a miss, validation and the test passes."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return time.monotonic() - _IMPORTED_AT


class TimeToAccuracy(pl.Callback):
    """After every ``every_n_epochs`` epochs, score the *test* set and record the training time.

    Only for reporting how fast a recipe gets where (the figure of "Time to accuracy"); model
    selection still uses the validation split. Time counts training and validation, not this
    extra scoring pass; ``wall_s`` is the job's whole wall time so far (:func:`process_age_s`).
    Writes ``time_to_accuracy.csv`` (epoch, step, train_time_s, wall_s, test_acc)
    and ``time_to_accuracy.png`` into ``out_dir`` at the end of fit.
    """

    def __init__(self, out_dir: str, every_n_epochs: int = 1) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.rows: list[dict[str, float]] = []
        self._elapsed = 0.0
        self._start: Optional[float] = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None or trainer.sanity_checking:
            return
        self._elapsed += time.perf_counter() - self._start
        self._start = None
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        correct = total = 0
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode():
            for x, y in dm.test_dataloader():
                x, y = x.to(pl_module.device), y.to(pl_module.device)
                correct += int((pl_module(x).argmax(-1) == y).sum())
                total += len(y)
        pl_module.train(was_training)
        acc = correct / max(1, total)
        self.rows.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "train_time_s": round(self._elapsed, 2), "wall_s": round(process_age_s(), 2), "test_acc": acc})
        pl_module.log("tta/test_acc", acc)
        print(f"[time to accuracy] epoch {trainer.current_epoch + 1}: test acc {acc:.4f} after {self._elapsed:.0f} s")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "elapsed": self._elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self._elapsed = float(state_dict.get("elapsed", 0.0))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        from autonorm.pipeline.io import atomic_write_text
        from autonorm.viz.plots import plot_time_to_accuracy

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.out_dir / "time_to_accuracy.csv", buf.getvalue())
        plot_time_to_accuracy({"run": self.out_dir / "time_to_accuracy.csv"}, self.out_dir / "time_to_accuracy.png")
