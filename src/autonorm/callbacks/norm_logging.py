"""Record what the norms do during training: the scalars each norm declares in the registry (gate
values, DyT alpha and slope, AFN lambdas, ...) and gradient norms."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from autonorm.norms import DyT, norm_state


def dyt_slopes(model: torch.nn.Module) -> dict[str, float]:
    """``slope/<name>``: each DyT's effective slope at 0, ``alpha * weight`` averaged over channels
    (an AutoNorm's inner DyT under the AutoNorm's name). An alpha near 0 makes DyT a near-linear
    map, so this is what a gate that "picks DyT" picks."""
    out: dict[str, float] = {}
    for name, m in model.named_modules():
        if isinstance(m, DyT):
            owner = name[: -len(".dyt")] if name.endswith(".dyt") else name
            out[f"slope/{owner}" if owner else "slope"] = float((m.alpha.detach() * m.weight.detach()).mean())
    return out


class NormStateLogger(pl.Callback):
    """Log :func:`autonorm.norms.norm_state` (per norm point) and :func:`dyt_slopes` every
    ``every_n_steps`` steps.

    With Gumbel gates the logged training gate mean is the frequency of hard LN choices.
    """

    def __init__(self, every_n_steps: int = 25) -> None:
        self.every_n_steps = max(1, int(every_n_steps))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            model = getattr(pl_module, "model", pl_module)
            state = norm_state(model)
            state.pop("tau", None)  # logged by TemperatureScheduler
            state.update(dyt_slopes(model))
            if state:
                pl_module.log_dict(state, on_step=True, on_epoch=False)


class GradNormRecorder(pl.Callback):
    """Gradient L2 norm per layer (patch embedding, each block, final norm, head) over steps.

    Written to ``<out_dir>/grad_norms.json`` as ``{"steps": [...], "layers": {name: [...]}}``
    at the end of fit (the gradient heatmap plot reads it) and logged as ``grad_norm/<layer>``.
    """

    def __init__(self, out_dir: str, every_n_steps: int = 10) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_steps = max(1, int(every_n_steps))
        self.steps: list[int] = []
        self.layers: dict[str, list[float]] = defaultdict(list)

    @staticmethod
    def _layer_of(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        model = getattr(pl_module, "model", pl_module)
        sq: dict[str, float] = defaultdict(float)
        for name, p in model.named_parameters():
            if p.grad is not None:
                sq[self._layer_of(name)] += float(p.grad.detach().float().pow(2).sum())
        self.steps.append(int(trainer.global_step))
        for layer, v in sq.items():
            self.layers[layer].append(v**0.5)
        # the same numbers to the loggers (metrics.csv, W&B) as grad_norm/<layer>
        pl_module.log_dict({f"grad_norm/{k}": v**0.5 for k, v in sq.items()}, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "layers": dict(self.layers)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))
        self.layers = defaultdict(list, {k: list(v) for k, v in state_dict.get("layers", {}).items()})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            from autonorm.pipeline.io import atomic_write_json

            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out_dir / "grad_norms.json", self.state_dict())
