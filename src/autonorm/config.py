"""Typed schemas for the config groups, checked before anything trains.

Hydra composes plain YAML (``autonorm/conf/``); :func:`validate` then merges each group onto a dataclass
schema with OmegaConf, which rejects wrong types and unknown keys, and each schema's
``__post_init__`` rejects out-of-range values. Every failure becomes a :class:`ConfigError`
whose message names the offending key, e.g. ``optim.lr must be > 0 (got -1.0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from autonorm.errors import AutoNormError


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


SCHEDULES = ("constant", "linear", "exponential", "cosine")


@dataclass
class GateSchema:
    kind: str = "soft"
    hidden: int = 0
    tau_start: float = 1.0
    tau_end: float = 1.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        _check(self.kind in ("soft", "gumbel"), "gate.kind", "must be one of soft, gumbel", self.kind)
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
    _check(name in ("ln", "dyt", "autonorm", "afn"), "norm.name", "must be one of ln, dyt, autonorm, afn", name)
    if "alpha_init" in norm:
        _check(_num(norm.alpha_init, "norm.alpha_init", float) > 0, "norm.alpha_init", "must be > 0", norm.alpha_init)
    if "freeze_branch" in norm:
        _check(norm.freeze_branch in (None, "ln", "dyt"), "norm.freeze_branch", "must be null, ln or dyt", norm.freeze_branch)
    for key in ("lambda_mu_init", "lambda_sigma_init", "lambda_gamma_init", "lambda_beta_init"):
        if key in norm:
            v = _num(norm[key], f"norm.{key}", float)
            _check(-20 <= v <= 20, f"norm.{key}", "is a pre-sigmoid logit and must be in [-20, 20]", v)
    if "impl" in norm:
        _check(norm.impl in ("eager", "compiled", "fused"), "norm.impl", "must be one of eager, compiled, fused", norm.impl)


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


def _check_data(data: DictConfig) -> None:
    _check(_num(data.batch_size, "data.batch_size") >= 1, "data.batch_size", "must be >= 1", data.batch_size)
    _check(_num(data.get("eval_batch_size", 1), "data.eval_batch_size") >= 1, "data.eval_batch_size", "must be >= 1", data.get("eval_batch_size"))
    _check(_num(data.val_size, "data.val_size", float) > 0, "data.val_size", "must be > 0", data.val_size)


def _check_trainer(trainer: DictConfig) -> None:
    me = trainer.get("max_epochs")
    if me is not None:
        _check(_num(me, "trainer.max_epochs") >= 1, "trainer.max_epochs", "must be >= 1", me)
    ms = trainer.get("max_steps", -1)
    _check(ms is None or _num(ms, "trainer.max_steps") == -1 or int(ms) >= 1, "trainer.max_steps", "must be -1 or >= 1", ms)


def _structured(schema: type, section: Any, prefix: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:  # wrong type / unknown key
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{prefix}.{key}: {exc.msg if hasattr(exc, 'msg') else exc}") from None


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
    transfer = cfg.get("transfer") or {}
    mode = transfer.get("mode", "none")
    _check(mode in ("none", "freeze", "finetune"), "transfer.mode", "must be none, freeze or finetune", mode)
    _check(cfg.get("reuse_phase") in (None, "teacher"), "reuse_phase", "must be null or teacher", cfg.get("reuse_phase"))
    distill = cfg.get("distill") or {}
    if distill.get("mode", "none") != "none":
        _check(float(distill.temperature) > 0, "distill.temperature", "must be > 0", distill.temperature)
        _check(0 <= float(distill.weight) <= 1, "distill.weight", "must be in [0, 1]", distill.weight)


def method_name(cfg: DictConfig) -> str:
    """The row name in the baseline table: ``cfg.method`` or one derived from the config."""
    if cfg.get("method"):
        return str(cfg.method)
    parts = [{"ln": "LN", "dyt": "DyT", "autonorm": "AutoNorm", "afn": "AFN"}[cfg.norm.name]]
    if cfg.norm.name == "autonorm":
        parts.append(cfg.gate.kind)
    mode = (cfg.get("transfer") or {}).get("mode", "none")
    if mode != "none":
        parts.append(mode.capitalize())
    if (cfg.get("distill") or {}).get("mode", "none") != "none":
        parts.append("KD")
    return "-".join(parts)

