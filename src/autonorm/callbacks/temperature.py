"""Anneal the Gumbel-softmax temperature of every AutoNorm gate, once per optimizer step."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from autonorm.norms import GumbelGate, gate_modules, set_temperature
from autonorm.norms.schedules import temperature_at

TAU_END_AT = ("last_step", "after_last")
START = ("restart", "continue")


class TemperatureScheduler(pl.Callback):
    """Set ``tau = temperature_at(step, span, tau_start, tau_end, schedule)`` before each step.

    Two explicit choices:

    * ``tau_end_at``: ``"last_step"`` puts ``tau_end`` on the last optimizer step (``span = total
      - 1``); ``"after_last"`` runs the schedule over ``total`` steps, so ``tau_end`` would be the
      value of the step after the last one and training ends just above it.
    * ``start`` (for a run that continues a pretraining, e.g. ``transfer.gumbel_tau``):
      ``"restart"`` anneals from ``tau_start`` again; ``"continue"`` keeps ``tau_end``, where the
      pretraining's schedule ended, for the whole run.

    The temperature is a function of ``trainer.global_step`` only, so a resumed run continues
    the schedule exactly where it stopped. It is logged as ``tau``.
    """

    def __init__(
        self, tau_start: float = 1.0, tau_end: float = 1.0, schedule: str = "constant",
        tau_end_at: str = "last_step", start: str = "restart",
    ) -> None:
        if tau_end_at not in TAU_END_AT:
            raise ValueError(f"tau_end_at must be one of {list(TAU_END_AT)}, got tau_end_at={tau_end_at!r}")
        if start not in START:
            raise ValueError(f"start must be one of {list(START)}, got start={start!r}")
        self.tau_start, self.tau_end, self.schedule = float(tau_start), float(tau_end), schedule
        self.tau_end_at, self.start = tau_end_at, start
        temperature_at(0, 1, self.tau_start, self.tau_end, schedule)  # validate early

    def current(self, trainer: pl.Trainer) -> float:
        if self.start == "continue":
            return self.tau_end if self.schedule != "constant" else self.tau_start
        total = max(1, int(trainer.estimated_stepping_batches))
        span = total - 1 if self.tau_end_at == "last_step" else total
        return temperature_at(trainer.global_step, span, self.tau_start, self.tau_end, self.schedule)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not any(isinstance(g, GumbelGate) for g in gate_modules(pl_module)):
            return  # soft gates have no temperature
        tau = self.current(trainer)
        set_temperature(pl_module, tau)
        pl_module.log("tau", tau, on_step=True, on_epoch=False)
