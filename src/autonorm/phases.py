"""The pipeline's phases: which task a run trains, and the cached runs it builds on.

A transfer run needs the MNIST-pretrained student of its own norm / gate / model; a distilled
run also needs a teacher. With ``pretrained: auto`` both come from the phase cache
(:class:`autonorm.pipeline.PhaseCache`, under ``paths.cache_dir``), keyed by a hash of the
whole resolved phase config that :func:`fit_phase` reads (seed, data, model, norm, gate, optim and
trainer, with the same exclusions as a run's identity) and of the source
(:func:`autonorm.pipeline.identity.source_hash`): an edit to a norm is a miss, not a stale
student. On a miss, or when the cached checkpoint cannot be read, the phase is trained here, in
the same job, under a file lock, so parallel sweep jobs that need the same pretraining train it
once, and a build that was interrupted (killed, or stopped by a signal) resumes from its last
checkpoint when a job next needs it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from autonorm import console
from autonorm.callbacks import (
    AtomicCheckpointIO,
    AutoPathsCallback,
    NonFiniteLossGuard,
    RNGStateCallback,
    RunRecord,
    StepCheckpoint,
    TemperatureScheduler,
    TrainLoaderStateCallback,
    data_record,
    with_summary,
)
from autonorm.callbacks.resume import capture_rng_state, restore_rng_state
from autonorm.config import ConfigError
from autonorm.configs import load_group
from autonorm.pipeline.cache import PhaseCache, config_key
from autonorm.pipeline.identity import identity_config, source_hash
from autonorm.pipeline.runfolder import checkpoint_step
from autonorm.tasks import ClassificationTask, DistillTask, TransferTask, load_model_checkpoint, load_weights, model_state, read_checkpoint

log = logging.getLogger("autonorm")

#: The sections of a phase config that :func:`fit_phase` reads: its cache key.
PHASE_KEYS = ("seed", "data", "model", "norm", "gate", "optim", "trainer")
#: Training time, epochs and steps of a cached phase, stored beside its checkpoint.
FIT_STATS = "fit.json"
#: A phase build's resume checkpoints, inside its build folder.
CHECKPOINTS = "checkpoints"


def _container(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def derive(cfg: DictConfig, **groups: Any) -> DictConfig:
    """A copy of ``cfg`` with whole groups replaced (``data="mnist"``, ``trainer={...}``)."""
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for group, value in groups.items():
        new[group] = load_group(group, value) if isinstance(value, str) else value
    return new


def _task_kwargs(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    return {
        "model_cfg": _container(cfg.model),
        "norm_cfg": _container(cfg.norm),
        "num_classes": int(num_classes),
        "optim": _container(cfg.optim),
        "compile": bool(cfg.trainer.get("compile", False)),
    }


def phase_callbacks(cfg: DictConfig, out_dir: Path, datamodule: Any) -> list[pl.Callback]:
    """The callbacks of a phase build: the guards and the temperature schedule it trains with, and
    the checkpoints a run resumes from (``out_dir/checkpoints/last.ckpt`` every
    ``callbacks.last_checkpoint.every_n_train_steps`` steps and after each epoch's validation, with
    the RNG and data-loader states), so an interrupted build resumes to the weights an
    uninterrupted one ends with."""
    ckpt_dir = str(out_dir / CHECKPOINTS)
    every = int(OmegaConf.select(cfg, "callbacks.last_checkpoint.every_n_train_steps", default=None) or 100)
    return [
        NonFiniteLossGuard(),
        TemperatureScheduler(cfg.gate.tau_start, cfg.gate.tau_end, cfg.gate.schedule, cfg.gate.get("tau_end_at", "last_step")),
        RunRecord(None, data_record(datamodule)),
        StepCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=every, enable_version_counter=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1, auto_insert_metric_name=False, enable_version_counter=False),
        RNGStateCallback(),
        TrainLoaderStateCallback(),
        AutoPathsCallback(),
        console.progress_bar(),
    ]


def fit_phase(cfg: DictConfig, out_dir: Path, init: Path | None = None) -> None:
    """Train a plain classification run of ``cfg`` and save it as ``out_dir/model.ckpt``
    (starting from the weights of ``init`` but its head, when given).

    ``out_dir/checkpoints/last.ckpt``, left by an interrupted build of the same phase, is resumed
    from (the phase cache keeps the build folder of an interrupted build); an unreadable one is
    discarded and the build starts over. ``fit.json`` holds the training time of all attempts
    together (Lightning's ``Timer`` state travels in the checkpoint), the epochs and the steps."""
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = ClassificationTask(**_task_kwargs(cfg, datamodule.num_classes))
    if init is not None:
        load_weights(task.model, model_state(read_checkpoint(init)), skip_prefixes=("head.",), source=str(init))
    last = out_dir / CHECKPOINTS / "last.ckpt"
    step = checkpoint_step(last) if last.is_file() else None
    if last.is_file() and step is None:
        print(f"The interrupted build's {last} cannot be read; training this phase from the start")
        shutil.rmtree(out_dir / CHECKPOINTS)
    elif step is not None:
        print(f"Resuming the interrupted build from {last} (step {step})")
    tcfg = _container(cfg.trainer)
    tcfg.pop("compile", None)
    tcfg.update(default_root_dir=str(out_dir), enable_checkpointing=True, logger=False)
    timer = pl.callbacks.Timer()
    callbacks = [*phase_callbacks(cfg, out_dir, datamodule), timer]
    trainer = instantiate(tcfg, callbacks=with_summary(tcfg, callbacks), plugins=[AtomicCheckpointIO()])
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if step is not None else None)
    if trainer.interrupted:  # Lightning returns from fit on KeyboardInterrupt: never store a half-trained phase
        raise KeyboardInterrupt(f"training of the phase in {out_dir} was interrupted; run again to resume it")
    stats = {"train_time_s": round(timer.time_elapsed("train"), 2), "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step)}
    (out_dir / FIT_STATS).write_text(json.dumps(stats))  # moved into the cache entry with the checkpoint
    trainer.save_checkpoint(str(out_dir / "model.ckpt"))
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # the resume points; the entry keeps model.ckpt


def phase_key(phase: str, pcfg: DictConfig, init: Path | None = None) -> tuple[str, dict[str, Any]]:
    """The cache key of a phase config and what it hashes (the :data:`PHASE_KEYS` sections, the
    source and, for a phase that starts from another cache entry, that entry)."""
    resolved = identity_config(pcfg)
    parts = {"phase": phase, "config": {k: resolved.get(k) for k in PHASE_KEYS}, "source_hash": source_hash()}
    if init is not None:
        parts["init"] = init.parent.name  # the cache entry it starts from
    return config_key(parts), parts


def _cached_phase(cfg: DictConfig, phase: str, pcfg: DictConfig, init: Path | None = None) -> Path:
    """The phase's cached checkpoint, trained here on a miss. The global RNG states are put back
    afterwards, so the run that needed the phase goes on exactly as it does on a cache hit: its
    numbers never depend on whether an earlier job had built the phase already."""
    key, key_parts = phase_key(phase, pcfg, init)
    cache = PhaseCache(cfg.paths.cache_dir)
    state = capture_rng_state()
    try:
        return cache.get_or_create(
            phase, key, lambda tmp: fit_phase(pcfg, Path(tmp), init), meta=key_parts, valid=lambda p: checkpoint_step(p) is not None
        )
    finally:
        restore_rng_state(state)


def pretrain_config(cfg: DictConfig) -> DictConfig:
    """The student's pretraining run: same norm / gate / model / seed, on ``transfer.pretrain.data``."""
    trainer = OmegaConf.create(_container(cfg.trainer))
    trainer.max_epochs = int(cfg.transfer.pretrain.max_epochs)
    pcfg = derive(cfg, data=str(cfg.transfer.pretrain.data), trainer=trainer)
    subset = cfg.transfer.pretrain.get("train_subset")
    if subset is not None:  # a smaller pretraining budget (e.g. for quick full-data tables)
        pcfg.data.train_subset = int(subset)
    return pcfg


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The teacher: a larger LN ViT trained on the run's own data."""
    trainer = OmegaConf.create(_container(cfg.trainer))
    trainer.max_epochs = int(cfg.distill.teacher.max_epochs)
    teacher = derive(cfg, model=str(cfg.distill.teacher.model), norm="ln", trainer=trainer)
    return teacher


def resolve_pretrained(cfg: DictConfig) -> Path:
    spec = str(cfg.transfer.pretrained)
    return _cached_phase(cfg, "student", pretrain_config(cfg)) if spec == "auto" else Path(spec)


def resolve_teacher(cfg: DictConfig) -> Path:
    """The teacher's checkpoint. With ``distill.teacher.pretrain_epochs > 0`` it starts, like the
    students, from an MNIST pretraining of its own model (``transfer.pretrain.data``, cached)."""
    spec = str(cfg.distill.teacher.pretrained)
    if spec != "auto":
        return Path(spec)
    tcfg = teacher_config(cfg)
    epochs = int(cfg.distill.teacher.get("pretrain_epochs", 0) or 0)
    init = None
    if epochs > 0:
        trainer = OmegaConf.create(_container(tcfg.trainer))
        trainer.max_epochs = epochs
        data = (cfg.get("transfer") or {}).get("pretrain", {}).get("data", "mnist_mini")
        # the "student" phase: with the students' model this is the LN students' own pretraining (one cache entry)
        init = _cached_phase(cfg, "student", derive(tcfg, data=str(data), trainer=trainer))
    return _cached_phase(cfg, "teacher", tcfg, init)


def reused_phase_config(cfg: DictConfig) -> DictConfig:
    """The config of a ``reuse_phase: teacher`` run (the Teacher row): the teacher's model
    (``distill.teacher.model``), LayerNorm and budget (``distill.teacher.max_epochs``), so the
    row is, and reports, exactly the teacher the distilled rows learn from."""
    phase = cfg.get("reuse_phase")
    if phase != "teacher":
        raise ConfigError(f"reuse_phase={phase} is not known; choose teacher or null")
    if "teacher" not in (cfg.get("distill") or {}):
        raise ConfigError("reuse_phase=teacher needs distill.teacher (model, max_epochs, pretrained)")
    return teacher_config(cfg)


def load_reused_phase(cfg: DictConfig, task: pl.LightningModule) -> dict[str, Any]:
    """For the Teacher row (``cfg`` from :func:`reused_phase_config`): load the cached teacher,
    trained here on a cache miss, into ``task.model`` instead of training a second copy. Returns
    its training stats (``train_time_s``, ``epochs``, ``steps``) and its ``checkpoint`` path."""
    path = resolve_teacher(cfg)
    copied = load_weights(task.model, model_state(read_checkpoint(path)), source=str(path))
    print(f"Reused the cached teacher {path} ({len(copied)} tensors); not training it again")
    stats_file = path.parent / FIT_STATS
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    return {**stats, "checkpoint": str(path)}


def build_task(cfg: DictConfig, num_classes: int) -> pl.LightningModule:
    """The LightningModule for ``cfg``: classify, transfer (freeze | finetune), or distill."""
    mode = cfg.transfer.mode
    kd = cfg.distill.mode == "kd"
    kwargs = _task_kwargs(cfg, num_classes)
    if mode == "none" and not kd:
        return ClassificationTask(**kwargs)
    t = cfg.transfer
    kwargs.update(mode=mode, frozen_blocks=int(t.get("frozen_blocks", 0)), freeze_adaptive=bool(t.get("freeze_adaptive", False)), adapt_stats=bool(t.get("adapt_stats", False)))
    if kd:
        task: TransferTask = DistillTask(**kwargs, temperature=float(cfg.distill.temperature), weight=float(cfg.distill.weight))
    else:
        task = TransferTask(**kwargs)
    if mode != "none":
        path = resolve_pretrained(cfg)
        copied = load_weights(task.model, model_state(read_checkpoint(path)), skip_prefixes=("head.",), source=str(path))
        print(f"Transferred {len(copied)} tensors from {path} (new {num_classes}-class head)")
    if kd:
        assert isinstance(task, DistillTask)
        task.set_teacher(load_model_checkpoint(resolve_teacher(cfg)))
    return task
