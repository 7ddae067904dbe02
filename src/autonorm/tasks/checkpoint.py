"""Read model weights out of a training checkpoint, with clear errors for bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from autonorm.build import build_model
from autonorm.config import AutoNormError


class CheckpointError(AutoNormError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a PyTorch file): {exc}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no 'state_dict': not a Lightning checkpoint of this project")
    return ckpt


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries of a task checkpoint, without the prefix."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], skip_prefixes: tuple[str, ...] = (), source: str = "") -> list[str]:
    """Copy every matching tensor into ``model``; raise listing keys that are missing or mismatched.

    Keys under ``skip_prefixes`` (e.g. ``head.`` when transferring to a new task) are ignored on
    both sides. Returns the names of the copied tensors.
    """
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}
    source_keys = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    missing = sorted(set(target) - set(source_keys))
    unexpected = sorted(set(source_keys) - set(target))
    shape = sorted(k for k in set(target) & set(source_keys) if target[k].shape != source_keys[k].shape)
    if missing or unexpected or shape:
        def _fmt(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing in checkpoint: {_fmt(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_fmt(unexpected)}")
        if shape:
            parts.append("shape mismatch: " + _fmt([f"{k} {tuple(source_keys[k].shape)} vs {tuple(target[k].shape)}" for k in shape]))
        raise CheckpointError(f"checkpoint {source} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(source_keys, strict=False)
    return sorted(source_keys)


def checkpoint_record(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a training checkpoint records about its run: ``identity``, ``data`` (name, num_classes,
    classes, mean, std) and ``val_metrics`` (see :class:`autonorm.callbacks.RunRecord`); ``{}`` for
    checkpoints written before these were recorded."""
    record = ckpt.get("autonorm")
    return record if isinstance(record, dict) else {}


def load_model_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the model stored in any task checkpoint of this project and load its weights."""
    return model_from_checkpoint(read_checkpoint(path), path)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path) -> nn.Module:
    """The model of an already read checkpoint (:func:`read_checkpoint`), weights loaded, in eval mode."""
    hp = ckpt.get("hyper_parameters") or {}
    if not {"model_cfg", "norm_cfg", "num_classes"} <= set(hp):
        raise CheckpointError(f"checkpoint {path} lacks the model config (model_cfg/norm_cfg): not from this project")
    model = build_model(hp["model_cfg"], hp["norm_cfg"], hp["num_classes"])
    load_weights(model, model_state(ckpt), source=str(path))
    return model.eval()
