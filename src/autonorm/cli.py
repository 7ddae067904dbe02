"""The Hydra mains behind ``train.py`` and ``eval.py``. Nothing imports this module.

``train(cfg)`` is the whole job of one run: validate the config, take the run folder's lock,
compare the run's identity with the one stored there (skip, resume or refuse; see
:mod:`autonorm.pipeline.runfolder`), build data / task / callbacks / loggers / trainer with Hydra
``instantiate``, fit (resuming from the newest readable checkpoint), test the best checkpoint,
evaluate and plot into the run folder, then write ``results.json`` and the ``COMPLETED`` marker.
A run that fails writes ``FAILED`` instead, one stopped by SIGTERM / SIGINT ``INTERRUPTED``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from autonorm import console
from autonorm.callbacks import AtomicCheckpointIO, RunRecord, data_record, with_summary
from autonorm.config import AutoNormError, method_name, validate
from autonorm.configs import load_group
from autonorm.loggers import build_loggers, finish as finish_loggers
from autonorm.phases import build_task, load_reused_phase, reused_phase_config
from autonorm.pipeline.history import merge_metrics, stash_metrics
from autonorm.pipeline.identity import make_identity, public_identity, unused_overrides, write_identity
from autonorm.pipeline.interrupt import SWEEP, RunInterrupted, signals_interrupt
from autonorm.pipeline.io import atomic_write_json, atomic_write_text, mark_completed, mark_failed
from autonorm.pipeline.lock import RunInUseError, RunLock
from autonorm.pipeline.runfolder import INTERRUPTED, Plan, RunRefused, clear_for_retraining, clear_stale_markers, plan_run
from autonorm.tasks.checkpoint import CheckpointError, checkpoint_record

log = logging.getLogger("autonorm")


# ---- helpers -------------------------------------------------------------------------------
def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra (tests calling train() directly)
        return False


def _instantiate_dict(section: Optional[DictConfig]) -> list[Any]:
    if not section:
        return []
    return [instantiate(v) for v in section.values() if v is not None and "_target_" in v]


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]) -> pl.Trainer:
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg.pop("compile", None)
    return instantiate(tcfg, callbacks=with_summary(tcfg, callbacks), logger=loggers or False, plugins=[AtomicCheckpointIO()])


def _best_effort_method(cfg: DictConfig) -> Optional[str]:
    try:
        return method_name(cfg)
    except Exception:  # an invalid config is reported by validate(), not here
        return cfg.get("method")


def _metric(metrics: dict[str, Any], key: str) -> Optional[float]:
    v = metrics.get(key)
    return None if v is None else float(v)


# ---- the job ---------------------------------------------------------------------------------
def _is_rank_zero() -> bool:
    """False in the worker processes Lightning starts for multi-process training (they only train)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _warn_unused(cfg: DictConfig) -> None:
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra
        return
    for line in unused_overrides(cfg, overrides):
        log.warning(line)


def train(cfg: DictConfig) -> Optional[float]:
    """Run one training job; return ``cfg.optimized_metric`` (for sweepers).

    The run folder is locked for the whole job; its stored identity decides whether the job is
    skipped, resumed or refused (:func:`autonorm.pipeline.runfolder.plan_run`) before anything in
    it is written. SIGTERM / SIGINT leave an ``INTERRUPTED`` marker and raise
    :class:`~autonorm.pipeline.interrupt.RunInterrupted`.
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # (Hydra made it already) so that a bad config is recorded as FAILED
    with open_dict(cfg):  # name the table row now, so even a job that fails is listed by name
        cfg.method = _best_effort_method(cfg)
    identity = make_identity(cfg)
    if cfg.get("reuse_phase"):  # the Teacher row: the teacher's model, norm and budget
        cfg = reused_phase_config(cfg)
    validate(cfg)
    _warn_unused(cfg)
    rank_zero = _is_rank_zero()
    with (RunLock(run_dir) if rank_zero else nullcontext()), signals_interrupt():
        plan = plan_run(run_dir, identity, cfg.resume)
        if plan.skip is not None:
            print(f"Already completed: {run_dir} (test acc {plan.skip.get('test_acc')}). Use resume=never to retrain.")
            return plan.skip.get(cfg.optimized_metric.replace("/", "_"))
        if rank_zero:
            (clear_for_retraining if cfg.resume == "never" else clear_stale_markers)(run_dir)
            write_identity(run_dir, identity)
        if plan.note:
            print(plan.note)
        try:
            return _fit_and_report(cfg, run_dir, identity, plan, rank_zero)
        except RunInterrupted as exc:
            if rank_zero:
                atomic_write_text(run_dir / INTERRUPTED, f"{exc} at {time.strftime('%Y-%m-%d %H:%M:%S')}; run the same command to resume\n")
            raise


def _fit_and_report(cfg: DictConfig, run_dir: Path, identity: dict[str, Any], plan: Plan, rank_zero: bool) -> Optional[float]:
    console.quiet(ignore_warnings=bool((cfg.get("extras") or {}).get("ignore_warnings", False)))
    if rank_zero:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    console.show_config(cfg, run_dir / "config.yaml")
    console.show_phase_budgets(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule.num_classes)

    callbacks = _instantiate_dict(cfg.get("callbacks"))
    timer = pl.callbacks.Timer()
    callbacks += [timer, RunRecord(public_identity(identity), data_record(datamodule))]
    if plan.resume_from is not None and rank_zero:  # before the CSV logger deletes metrics.csv
        stash_metrics(run_dir, plan.resume_step)
    loggers = build_loggers(cfg, run_dir)
    trainer = build_trainer(cfg, callbacks, loggers)

    reused: Optional[dict[str, Any]] = None
    val: dict[str, float] = {}
    if cfg.get("reuse_phase"):  # the Teacher row: the cached teacher, not a second training
        reused = load_reused_phase(cfg, task)
        trainer.validate(task, datamodule=datamodule, verbose=False)
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    else:
        if plan.resume_from is not None:
            print(f"Resuming from {plan.resume_from}")
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(plan.resume_from) if plan.resume_from else None)
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # the callback monitoring a metric (best.ckpt), not the epoch-end one that writes last.ckpt
    best_cb = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) and getattr(cb, "best_model_path", "")), None)
    best_path = best_cb.best_model_path if best_cb is not None else ""
    if reused is not None:  # its weights are loaded already; report where they live
        best_path = reused.pop("checkpoint", "")
    if best_cb is not None and best_path:  # evaluate the best weights, not the last ones
        best = torch.load(best_path, map_location="cpu", weights_only=False)
        task.load_state_dict(best["state_dict"])
        # the validation figures of the best epoch, stored with it (a resumed run has them too)
        val = checkpoint_record(best).get("val_metrics") or val
        if best_cb.best_model_score is not None:
            val["val/acc"] = float(best_cb.best_model_score)
    test = {}
    if cfg.test_after_fit:
        datamodule.setup("test")
        test = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    if rank_zero:
        merge_metrics(run_dir)  # a resumed run's earlier rows back into metrics.csv

    results: dict[str, Any] = {
        "method": method_name(cfg),
        "seed": int(cfg.seed),
        "norm": cfg.norm.name,
        "gate": cfg.gate.kind if cfg.norm.name == "autonorm" else None,
        "transfer": cfg.transfer.mode,
        "distill": cfg.distill.mode,
        "data": cfg.data.name,
        "model": cfg.model.name,
        "val_acc": _metric(val, "val/acc"),
        "val_loss": _metric(val, "val/loss"),
        "test_acc": _metric(test, "test/acc"),
        "test_loss": _metric(test, "test/loss"),
        **({"teacher_test_acc": _metric(test, "test/teacher_acc")} if "test/teacher_acc" in test else {}),
        "train_time_s": round(timer.time_elapsed("train"), 2),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        **(reused or {}),  # the reused phase's own training time, epochs and steps
        "best_checkpoint": best_path or None,
        "identity": public_identity(identity),
    }
    if trainer.is_global_zero:
        from autonorm.eval.report import evaluate_run

        results.update(evaluate_run(task.model, datamodule, cfg.eval, run_dir, loggers=loggers))
        atomic_write_json(run_dir / "results.json", results)
        mark_completed(run_dir, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        notes = finish_loggers(loggers, results, best_path)
        console.show_summary(results, run_dir)
        for note in notes:
            print(note)
    return results.get(cfg.optimized_metric.replace("/", "_"))


def run_job(cfg: DictConfig, job: Any) -> Optional[float]:
    """Run ``job(cfg)`` with the project's error policy.

    * A user error (:class:`AutoNormError`: bad config, data, checkpoint, NaN loss) prints one
      clear message and exits with status 2 in a single run.
    * In a multirun every failure is recorded as ``FAILED`` in the job's folder and the sweep
      goes on; the baseline table lists it.
    * SIGTERM / SIGINT (:class:`RunInterrupted`): exit status 143 / 130 in a single run; in a
      multirun the remaining jobs are not started, and the sweep ends with the table (listing
      them) and that status (:class:`~autonorm.pipeline.hydra_callback.WriteTableOnMultirunEnd`).
    """
    try:
        run_dir: Optional[Path] = Path(cfg.paths.output_dir)
    except Exception:
        run_dir = None
    multirun = _is_multirun()
    if multirun and SWEEP.signal is not None:  # the sweep was interrupted: start no further job
        SWEEP.not_run.append(str(run_dir))
        print(f"Not run (the sweep was interrupted): {run_dir}")
        return None
    try:
        return job(cfg)
    except RunInterrupted as exc:
        print(f"\n{exc}: {run_dir} is marked INTERRUPTED; run the same command to resume", file=sys.stderr)
        if multirun:
            SWEEP.signal = exc.signum
            SWEEP.interrupted.append(str(run_dir))
            return None
        sys.exit(exc.exit_code)
    except Exception as exc:
        user_error = isinstance(exc, AutoNormError)
        text = f"{type(exc).__name__}: {exc}" if user_error else traceback.format_exc()
        # a refused start or another process's folder: nothing of this job to record there
        if run_dir is not None and run_dir.exists() and not isinstance(exc, (RunRefused, RunInUseError)):
            mark_failed(run_dir, text)
        if _is_multirun():
            log.error("Job failed (the sweep goes on): %s", text)
            return None
        if user_error:
            print(f"\nerror: {exc}", file=sys.stderr)
            sys.exit(2)
        raise


def _eval_datamodule(cfg: DictConfig, record: dict[str, Any], num_classes: int, ckpt_path: str) -> Any:
    """The test data for ``eval.py``: the checkpoint's own data set unless ``data=`` chose another
    (which must have the checkpoint's number of classes); images are always normalised as in training."""
    data = record.get("data") or {}
    if cfg.get("data") is None:
        if not data.get("name"):
            raise CheckpointError(f"checkpoint {ckpt_path} does not record its data set (written by an older version); pass data=<name>")
        with open_dict(cfg):
            cfg.data = load_group("data", data["name"])
    elif data.get("name") and data["name"] != cfg.data.name:
        print(f"Evaluating a model trained on {data['name']} on {cfg.data.name}, normalised as in training")
    if data.get("mean") and data.get("std"):
        with open_dict(cfg):
            cfg.data.mean, cfg.data.std = list(data["mean"]), list(data["std"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if datamodule.num_classes != num_classes:
        raise CheckpointError(
            f"checkpoint {ckpt_path} has a {num_classes}-class head but data={cfg.data.name} has "
            f"{datamodule.num_classes} classes; choose a data set with {num_classes} classes"
        )
    return datamodule


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """``eval.py``: clean test accuracy, robustness, profile, plots and norm weights for any training
    checkpoint, on the data set it was trained on unless ``data=`` says otherwise."""
    from autonorm.eval.report import evaluate_run
    from autonorm.eval.robustness import accuracy
    from autonorm.tasks.checkpoint import model_from_checkpoint, read_checkpoint

    if not cfg.get("ckpt_path"):
        raise AutoNormError("ckpt_path is required: python eval.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt")
    console.quiet(ignore_warnings=bool((cfg.get("extras") or {}).get("ignore_warnings", False)))
    ckpt = read_checkpoint(cfg.ckpt_path)
    model = model_from_checkpoint(ckpt, cfg.ckpt_path)
    record = checkpoint_record(ckpt)
    datamodule = _eval_datamodule(cfg, record, int(ckpt["hyper_parameters"]["num_classes"]), str(cfg.ckpt_path))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "checkpoint": str(Path(cfg.ckpt_path).absolute()),
        "trained_on": (record.get("data") or {}).get("name"),
        "data": cfg.data.name,
        "identity": record.get("identity"),
        "test_acc": accuracy(model, datamodule.test_x, datamodule.test_y, datamodule.normalize),
    }
    results.update(evaluate_run(model, datamodule, cfg.eval, out_dir))
    atomic_write_json(out_dir / "eval_results.json", results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    print(f"\nEvaluation written to {out_dir}")
    return results
