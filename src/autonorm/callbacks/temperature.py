"""Anneal the Gumbel-softmax temperature of every AutoNorm gate, once per optimizer step."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from autonorm.norms import GumbelGate, gate_modules, set_temperature
from autonorm.norms.schedules import temperature_at


class TemperatureScheduler(pl.Callback):
    """Set ``tau = temperature_at(global_step, total_steps, tau_start, tau_end, schedule)``.

    The temperature is a function of ``trainer.global_step`` only, so a resumed run continues
    the schedule exactly where it stopped. It is logged as ``tau``.
    """

    def __init__(self, tau_start: float = 1.0, tau_end: float = 1.0, schedule: str = "constant") -> None:
        self.tau_start, self.tau_end, self.schedule = float(tau_start), float(tau_end), schedule
        temperature_at(0, 1, self.tau_start, self.tau_end, schedule)  # validate early

    def current(self, trainer: pl.Trainer) -> float:
        total = max(1, int(trainer.estimated_stepping_batches))
        return temperature_at(trainer.global_step, total, self.tau_start, self.tau_end, self.schedule)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not any(isinstance(g, GumbelGate) for g in gate_modules(pl_module)):
            return  # soft gates have no temperature
        tau = self.current(trainer)
        set_temperature(pl_module, tau)
        pl_module.log("tau", tau, on_step=True, on_epoch=False)
