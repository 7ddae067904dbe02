"""Typed schemas for the config groups, checked before anything trains.

Hydra composes plain YAML (``autonorm/conf/``); :func:`validate` then merges each group onto a dataclass
schema with OmegaConf, which rejects wrong types and unknown keys, and each schema's
``__post_init__`` rejects out-of-range values. Every failure becomes a :class:`ConfigError`
whose message names the offending key, e.g. ``optim.lr must be > 0 (got -1.0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from autonorm.errors import AutoNormError
from autonorm.norms import FREEZE_BRANCHES, GATES, IMPLS, SCHEDULES, get_norm, norm_names
from autonorm.norms.autonorm import SQUASHES


class ConfigError(AutoNormError, ValueError):
    """A config value is invalid; the message names the key."""


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key} {msg} (got {value!r})")


def _num(value: Any, key: str, kind: type = int) -> Any:
    """``kind(value)``, or a :class:`ConfigError` naming ``key`` when it is not a number."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'} (got {value!r})") from None


@dataclass
class GateSchema:
    kind: str = "soft"
    hidden: int = 0
    tau_start: float = 1.0
    tau_end: float = 1.0
    schedule: str = "constant"
    features: str = "mean_scale"
    tau_end_at: str = "last_step"

    def __post_init__(self) -> None:
        _check(self.kind in GATES, "gate.kind", f"must be one of {', '.join(GATES)}", self.kind)
        _check(self.features in ("mean", "mean_scale"), "gate.features", "must be one of mean, mean_scale", self.features)
        _check(self.tau_end_at in ("last_step", "after_last"), "gate.tau_end_at", "must be one of last_step, after_last", self.tau_end_at)
        _check(self.hidden >= 0, "gate.hidden", "must be >= 0", self.hidden)
        _check(self.tau_start > 0, "gate.tau_start", "must be > 0", self.tau_start)
        _check(self.tau_end > 0, "gate.tau_end", "must be > 0", self.tau_end)
        _check(self.schedule in SCHEDULES, "gate.schedule", f"must be one of {', '.join(SCHEDULES)}", self.schedule)


@dataclass
class OptimSchema:
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0
    backbone_lr_scale: float = 1.0
    foreach: bool = True

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", "must be two values in [0, 1)", self.betas)
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0", self.warmup_epochs)
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        _check(0 <= self.label_smoothing < 1, "optim.label_smoothing", "must be in [0, 1)", self.label_smoothing)
        _check(self.backbone_lr_scale > 0, "optim.backbone_lr_scale", "must be > 0", self.backbone_lr_scale)


def _check_norm(norm: DictConfig) -> None:
    name = norm.get("name")
    _check(name in norm_names(), "norm.name", f"must be one of {', '.join(norm_names())}", name)
    if "alpha_init" in norm:
        _check(_num(norm.alpha_init, "norm.alpha_init", float) > 0, "norm.alpha_init", "must be > 0", norm.alpha_init)
    if "freeze_branch" in norm:
        _check(norm.freeze_branch in FREEZE_BRANCHES, "norm.freeze_branch", "must be null, ln or dyt", norm.freeze_branch)
    if "alpha_param" in norm:
        _check(norm.alpha_param in ("direct", "positive"), "norm.alpha_param", "must be one of direct, positive", norm.alpha_param)
    if "gate_features" in norm:
        _check(norm.gate_features in ("mean", "mean_scale"), "norm.gate_features", "must be one of mean, mean_scale", norm.gate_features)
    for key in ("lambda_mu_init", "lambda_sigma_init", "lambda_gamma_init", "lambda_beta_init"):
        if key in norm:
            v = _num(norm[key], f"norm.{key}", float)
            _check(0 <= v <= 1, f"norm.{key}", "is the initial residual weight and must be in [0, 1]", v)
    if "squash" in norm:
        _check(norm.squash in SQUASHES, "norm.squash", f"must be one of {', '.join(SQUASHES)}", norm.squash)
    if "eval_stats" in norm:
        _check(norm.eval_stats in ("batch", "running"), "norm.eval_stats", "must be one of batch, running", norm.eval_stats)
    if "dropout" in norm:
        v = _num(norm.dropout, "norm.dropout", float)
        _check(0 <= v < 1, "norm.dropout", "must be in [0, 1)", v)
    if "impl" in norm:
        _check(norm.impl in IMPLS, "norm.impl", f"must be one of {', '.join(IMPLS)}", norm.impl)


def _check_model(model: DictConfig, img_size: int = 32) -> None:
    for key in ("embed_dim", "depth", "num_heads", "patch_size"):
        _check(_num(model[key], f"model.{key}") >= 1, f"model.{key}", "must be >= 1", model[key])
    _check(model.embed_dim % model.num_heads == 0, "model.embed_dim", f"must be divisible by model.num_heads={model.num_heads}", model.embed_dim)
    size = _num(model.get("img_size", img_size), "model.img_size")
    _check(size % int(model.patch_size) == 0, "model.patch_size", f"must divide the image size {size}", model.patch_size)
    _check(size == 32, "model.img_size", "must be 32 (MNIST and CIFAR-10 are served as 32x32)", size)
    _check(model.get("attention", "auto") in ("auto", "sdpa", "explicit"), "model.attention", "must be auto, sdpa or explicit", model.get("attention"))
    stem = model.get("stem", "patch")
    _check(stem in ("patch", "conv"), "model.stem", "must be patch or conv", stem)
    if stem == "conv":
        p = int(model.patch_size)
        _check(p >= 2 and p & (p - 1) == 0, "model.patch_size", "must be a power of two >= 2 with model.stem=conv", p)
        _check(_num(model.get("stem_channels", 32), "model.stem_channels") >= 1, "model.stem_channels", "must be >= 1", model.get("stem_channels"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


#: The keys of a ``data`` config that :func:`autonorm.data.arguments.check_arguments` checks.
_DATA_ARGUMENTS = ("name", "batch_size", "eval_batch_size", "val_size", "seed", "crop_padding", "train_subset", "mean", "std", "device")


def _check_data(data: DictConfig) -> None:
    from autonorm.data.arguments import DataArgumentError, check_arguments

    _check(_num(data.val_size, "data.val_size", float) > 0, "data.val_size", "must be > 0", data.val_size)  # a run validates
    try:
        check_arguments(**{k: data[k] for k in _DATA_ARGUMENTS if k in data})
    except DataArgumentError as err:
        raise ConfigError(f"data.{err.key} {err.must} (got {err.value!r})") from None


def _trainer_arguments() -> set[str]:
    import inspect

    from pytorch_lightning import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def _check_trainer(trainer: DictConfig) -> None:
    import difflib

    known = _trainer_arguments() | {"_target_", "compile"}
    for key in trainer:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean trainer.{close[0]}?" if close else ""
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer argument{hint}")
    accel = str(trainer.get("accelerator", "auto"))
    if accel in ("gpu", "cuda"):
        _check(_cuda_available(), "trainer.accelerator", "needs a CUDA GPU and none is visible (use trainer=cpu or trainer=default)", accel)
    me = trainer.get("max_epochs")
    if me is not None:
        _check(_num(me, "trainer.max_epochs") >= 1, "trainer.max_epochs", "must be >= 1", me)
    ms = trainer.get("max_steps", -1)
    _check(ms is None or _num(ms, "trainer.max_steps") == -1 or int(ms) >= 1, "trainer.max_steps", "must be -1 or >= 1", ms)


def _check_eval_domains(ev: Any) -> None:
    if not ev or not ev.get("domains"):
        return
    from autonorm.eval.domains import check_domain_names

    check_domain_names(ev.domains)
    _check(_num(ev.get("domain_size", 1), "eval.domain_size") >= 1, "eval.domain_size", "must be >= 1", ev.get("domain_size"))


def _structured(schema: type, section: Any, prefix: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:  # wrong type / unknown key
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{prefix}.{key}: {exc.msg if hasattr(exc, 'msg') else exc}") from None


def _check_checkpoint_path(spec: Any, key: str) -> None:
    """``auto`` (the phase cache) or the path of an existing checkpoint file."""
    from pathlib import Path

    if str(spec) != "auto":
        _check(Path(str(spec)).expanduser().is_file(), key, "must be auto or an existing checkpoint file: not found", str(spec))


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise :class:`ConfigError` naming the first bad key."""
    _check(cfg.get("resume") in ("auto", "never"), "resume", "must be auto or never", cfg.get("resume"))
    _check(isinstance(cfg.get("seed"), int) and cfg.seed >= 0, "seed", "must be an integer >= 0", cfg.get("seed"))
    _structured(GateSchema, cfg.gate, "gate")
    _structured(OptimSchema, cfg.optim, "optim")
    _check_norm(cfg.norm)
    _check_model(cfg.model)
    _check_data(cfg.data)
    _check_trainer(cfg.trainer)
    _check_eval_domains(cfg.get("eval"))
    transfer = cfg.get("transfer") or {}
    mode = transfer.get("mode", "none")
    _check(mode in ("none", "freeze", "finetune"), "transfer.mode", "must be none, freeze or finetune", mode)
    if mode != "none":
        depth = int(cfg.model.depth)
        blocks = _num(transfer.get("frozen_blocks", 0), "transfer.frozen_blocks")
        _check(0 <= blocks <= depth, "transfer.frozen_blocks", f"must be in [0, model.depth={depth}]", blocks)
        _check_checkpoint_path(transfer.get("pretrained", "auto"), "transfer.pretrained")
    _check(cfg.get("reuse_phase") in (None, "teacher"), "reuse_phase", "must be null or teacher", cfg.get("reuse_phase"))
    distill = cfg.get("distill") or {}
    if distill.get("mode", "none") != "none" or cfg.get("reuse_phase") == "teacher":
        _check_checkpoint_path((distill.get("teacher") or {}).get("pretrained", "auto"), "distill.teacher.pretrained")
    if distill.get("mode", "none") != "none":
        _check(float(distill.temperature) > 0, "distill.temperature", "must be > 0", distill.temperature)
        _check(0 <= float(distill.weight) <= 1, "distill.weight", "must be in [0, 1]", distill.weight)


def method_name(cfg: DictConfig) -> str:
    """The row name in the baseline table: ``cfg.method`` or one derived from the config."""
    if cfg.get("method"):
        return str(cfg.method)
    if cfg.get("reuse_phase") == "teacher":
        return "Teacher"
    branch = cfg.norm.get("freeze_branch") if cfg.norm.name == "autonorm" else None
    if branch:  # the OnlyDyT / OnlyLayerNorm rows: AutoNorm with one branch's parameters frozen
        return {"ln": "OnlyDyT", "dyt": "OnlyLayerNorm"}[branch]
    parts = [get_norm(cfg.norm.name).display_name(OmegaConf.to_container(cfg.norm, resolve=True))]  # type: ignore[arg-type]
    mode = (cfg.get("transfer") or {}).get("mode", "none")
    if mode != "none":
        parts.append(mode.capitalize())
    if (cfg.get("distill") or {}).get("mode", "none") != "none":
        parts.append("KD")
    return "-".join(parts)

