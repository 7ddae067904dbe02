"""The model summary printed when training starts.

Lightning's own summary counts FLOPs only through an ``example_input_array`` and otherwise prints
``Total FLOPs: 0`` for every model. This one prints each top-level module's parameters (trainable
and frozen, which shows what ``transfer=freeze`` left to train) and the forward FLOPs per image of
:func:`autonorm.eval.profile.count_flops`, the convention of ``profile.json`` and the tables, so
the start of a run and its results give one figure.
"""

from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
from torch import nn

from autonorm.console import si


def _image_shape(model: nn.Module) -> tuple[int, int]:
    """``(img_size, in_chans)`` of a ViT of this project: its patch embedding's image size and
    the input channels of its first convolution."""
    img_size = int(model.patch_embed.img_size)  # type: ignore[union-attr]
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return img_size, int(conv.in_channels)


def summary_lines(model: nn.Module) -> list[str]:
    """The summary of ``model`` as lines of text (see the module docstring)."""
    from autonorm.eval.profile import count_flops, count_params

    rows = [("module", "type", "params", "trainable")]
    for name, child in model.named_children():
        counts = count_params(child)
        rows.append((name, type(child).__name__, si(counts["total"]), si(counts["trainable"])))
    counts = count_params(model)
    total, trainable = counts["total"], counts["trainable"]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    flops: Optional[dict[str, Any]] = None
    try:
        img_size, in_chans = _image_shape(model)
        flops = count_flops(model, img_size=img_size, in_chans=in_chans)
    except Exception as exc:  # noqa: BLE001 - a summary never stops a run
        lines.append(f"FLOPs not counted ({type(exc).__name__}: {exc})")
    lines.append(f"{si(total)} parameters, {si(trainable)} trainable, {si(total - trainable)} frozen")
    if flops is not None:
        lines.append(
            f"{si(flops['total'])}FLOPs per image, forward ({100 * flops['norm_fraction']:.1f}% in the norms; "
            "2 per multiply-add, 1 per element-wise op, as in profile.json)"
        )
    return lines


class ModelSummary(pl.callbacks.ModelSummary):
    """Prints :func:`summary_lines` of the task's model (``pl_module.model``) at the start of
    training, on rank zero. Being a :class:`~pytorch_lightning.callbacks.ModelSummary`, it stands in
    for Lightning's (:func:`with_summary` adds it when ``trainer.enable_model_summary``)."""

    def __init__(self) -> None:
        super().__init__(max_depth=1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            print("\n".join(summary_lines(getattr(pl_module, "model", pl_module))))


def with_summary(trainer_cfg: dict[str, Any], callbacks: list[Any]) -> list[Any]:
    """``callbacks`` plus a :class:`ModelSummary` when the trainer config's ``enable_model_summary``
    is on (its default), so Lightning adds no summary of its own."""
    return [*callbacks, ModelSummary()] if trainer_cfg.get("enable_model_summary", True) else list(callbacks)
