"""Test-only Lightning callbacks, added to a run with Hydra overrides such as
``+callbacks.killer._target_=reliability_helpers.KillAtStep`` (``tests/`` on ``PYTHONPATH``).
Not collected by pytest (no ``test_`` prefix)."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILL this process when step ``$KILL_AT_STEP`` is about to start (no-op when unset).

    Runs at the start of a training batch, i.e. after the previous step's checkpoint was written:
    a hard death mid-epoch, nothing gets to clean up.
    """

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        at = os.environ.get("KILL_AT_STEP")
        if at is not None and trainer.global_step == int(at):
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatchAtStep(pl.Callback):
    """Fill the input batch of step ``step`` with NaN, so that step's loss is NaN (weights stay finite)."""

    def __init__(self, step: int = 3) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class PoisonWeightsAfterStep(pl.Callback):
    """After step ``step``'s optimizer update, write an inf into the head's bias (loss stays finite until the next step)."""

    def __init__(self, step: int = 4) -> None:
        self.step = int(step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            model = getattr(pl_module, "model", pl_module)
            model.head.bias.data[0] = float("inf")


class RaiseAtStep(pl.Callback):
    """Raise ``RuntimeError`` when step ``$RAISE_AT_STEP`` is about to start (an in-process stand-in
    for a kill; no-op when unset). Read from the environment, like :class:`KillAtStep`, so the
    interrupted run and its resume have one config (one identity)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        at = os.environ.get("RAISE_AT_STEP")
        if at is not None and trainer.global_step == int(at):
            raise RuntimeError(f"interrupted at step {at} (test)")


class SignalAtStep(pl.Callback):
    """Send this process ``$SIGNAL_AT_STEP_SIGNAL`` (default SIGTERM) when step ``$SIGNAL_AT_STEP``
    is about to start (no-op when unset)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        at = os.environ.get("SIGNAL_AT_STEP")
        if at is not None and trainer.global_step == int(at):
            os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL_AT_STEP_SIGNAL", "SIGTERM")))


class SleepAtStep(pl.Callback):
    """Sleep ``$SLEEP_SECONDS`` when step ``$SLEEP_AT_STEP`` is about to start (no-op when unset):
    keeps a run busy while a test starts a second process on its folder."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        at = os.environ.get("SLEEP_AT_STEP")
        if at is not None and trainer.global_step == int(at):
            import time

            time.sleep(float(os.environ.get("SLEEP_SECONDS", "30")))


class KillInValidation(pl.Callback):
    """SIGKILL this process during the validation of epoch ``$KILL_IN_VALIDATION_OF_EPOCH`` (no-op when unset)."""

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        at = os.environ.get("KILL_IN_VALIDATION_OF_EPOCH")
        if at is not None and not trainer.sanity_checking and trainer.current_epoch == int(at):
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAtTest(pl.Callback):
    """Raise ``RuntimeError`` when the final test starts and ``$RAISE_AT_TEST`` is set (a kill
    during the final evaluation: fit finished, results not written)."""

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if os.environ.get("RAISE_AT_TEST"):
            raise RuntimeError("killed during the final evaluation (test)")
