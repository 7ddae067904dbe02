"""The Hydra mains behind ``train.py`` and ``eval.py``. Nothing imports this module.

``train(cfg)`` is the whole job of one run: validate the config, build data / task / callbacks /
loggers / trainer with Hydra ``instantiate``, fit (resuming from the run folder's ``last.ckpt``
when there is one), test the best checkpoint, evaluate and plot into the run folder, then write
``results.json`` and the ``COMPLETED`` marker. A run that fails writes ``FAILED`` instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from autonorm import console
from autonorm.callbacks import AtomicCheckpointIO
from autonorm.config import AutoNormError, method_name, validate
from autonorm.loggers import build_loggers, finish as finish_loggers
from autonorm.pipeline.io import atomic_write_json, atomic_write_text, is_completed, mark_completed, mark_failed
from autonorm.phases import build_task, load_reused_phase, reused_phase_config

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
    return instantiate(tcfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def _best_effort_method(cfg: DictConfig) -> Optional[str]:
    try:
        return method_name(cfg)
    except Exception:  # an invalid config is reported by validate(), not here
        return cfg.get("method")


def _metric(metrics: dict[str, Any], key: str) -> Optional[float]:
    v = metrics.get(key)
    return None if v is None else float(v)


# ---- the job ---------------------------------------------------------------------------------
def train(cfg: DictConfig) -> Optional[float]:
    """Run one training job; return ``cfg.optimized_metric`` (for sweepers)."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume == "auto" and is_completed(run_dir):
        results = json.loads((run_dir / "results.json").read_text())
        log.info("Run already completed, skipping (resume=never retrains): %s", run_dir)
        print(f"Already completed: {run_dir} (test acc {results.get('test_acc')}). Use resume=never to retrain.")
        return results.get(cfg.optimized_metric.replace("/", "_"))
    for stale in ("FAILED", "COMPLETED"):
        (run_dir / stale).unlink(missing_ok=True)

    with open_dict(cfg):  # name the table row now, so even a job that fails is listed by name
        cfg.method = _best_effort_method(cfg)
    if cfg.get("reuse_phase"):  # the Teacher row: the teacher's model, norm and budget
        cfg = reused_phase_config(cfg)
    validate(cfg)
    console.quiet(ignore_warnings=bool((cfg.get("extras") or {}).get("ignore_warnings", False)))
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
    callbacks.append(timer)
    loggers = build_loggers(cfg, run_dir)
    trainer = build_trainer(cfg, callbacks, loggers)

    reused: Optional[dict[str, Any]] = None
    if cfg.get("reuse_phase"):  # the Teacher row: the cached teacher, not a second training
        reused = load_reused_phase(cfg, task)
        trainer.validate(task, datamodule=datamodule, verbose=False)
    else:
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if cfg.resume == "auto" and last.exists() else None
        if ckpt_path:
            print(f"Resuming from {ckpt_path}")
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)

    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # the callback monitoring a metric (best.ckpt), not the epoch-end one that writes last.ckpt
    best_cb = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) and getattr(cb, "best_model_path", "")), None)
    best_path = best_cb.best_model_path if best_cb is not None else ""
    if reused is not None:  # its weights are loaded already; report where they live
        best_path = reused.pop("checkpoint", "")
    if best_cb is not None and best_path:  # evaluate the best weights, not the last ones
        task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"])
        if best_cb.best_model_score is not None:
            val["val/acc"] = float(best_cb.best_model_score)
    test = {}
    if cfg.test_after_fit:
        datamodule.setup("test")
        test = trainer.test(task, datamodule=datamodule, verbose=False)[0]

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
        "train_time_s": round(timer.time_elapsed("train"), 2),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        **(reused or {}),  # the reused phase's own training time, epochs and steps
        "best_checkpoint": best_path or None,
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
    """
    try:
        run_dir: Optional[Path] = Path(cfg.paths.output_dir)
    except Exception:
        run_dir = None
    try:
        return job(cfg)
    except Exception as exc:
        user_error = isinstance(exc, AutoNormError)
        text = f"{type(exc).__name__}: {exc}" if user_error else traceback.format_exc()
        if run_dir is not None and run_dir.exists():
            mark_failed(run_dir, text)
        if _is_multirun():
            log.error("Job failed (the sweep goes on): %s", text)
            return None
        if user_error:
            print(f"\nerror: {exc}", file=sys.stderr)
            sys.exit(2)
        raise


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """``eval.py``: robustness, profile, plots and norm weights for any training checkpoint."""
    from autonorm.eval.report import evaluate_run
    from autonorm.tasks import load_model_checkpoint

    if not cfg.get("ckpt_path"):
        raise AutoNormError("ckpt_path is required: python eval.py ckpt_path=outputs/runs/.../checkpoints/best.ckpt")
    console.quiet(ignore_warnings=bool((cfg.get("extras") or {}).get("ignore_warnings", False)))
    model = load_model_checkpoint(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = evaluate_run(model, datamodule, cfg.eval, out_dir)
    atomic_write_json(out_dir / "eval_results.json", results)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    print(f"\nEvaluation written to {out_dir}")
    return results
