"""The run's experiment loggers, from the ``logger`` config group.

* CSV (always): ``<run>/metrics.csv`` through :class:`RunCSVLogger`.
* W&B (``logger=wandb``): offline unless ``WANDB_MODE`` says otherwise, so it needs neither a key
  nor a network; runs of one sweep share a group (the sweep's name), a run is named
  ``<method>-s<seed>`` and tagged with its norm, gate, transfer, data and model (plus ``tags``).
  When W&B cannot start (no key, no network) the run goes on with its other loggers.
* TensorBoard (``logger=tensorboard``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

log = logging.getLogger("autonorm")


class _RunFolderWriter(ExperimentWriter):
    """Lightning's CSV writer for a log folder that is the run folder itself.

    The run folder always holds ``config.yaml`` and ``.hydra/``, so Lightning's "logs directory
    exists and is not empty" warning would fire on every run. Its actual effect is kept: a
    ``metrics.csv`` left from an earlier attempt is removed before the new one is written.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            self._fs.rm_file(self.metrics_file_path)


class RunCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` writing ``metrics.csv`` into the run folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunFolderWriter(log_dir=self.log_dir)
        return self._experiment


# ---- W&B conventions ---------------------------------------------------------------------------
def _hydra_runtime() -> tuple[bool, Optional[str], dict[str, Any]]:
    """(multirun?, sweep folder name, group choices) of the running Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, Path(str(hc.sweep.dir)).name, dict(hc.runtime.choices)
    except Exception:  # not under Hydra
        return False, None, {}


def sweep_group(choices: Mapping[str, Any], sweep_dir: Optional[str], multirun: bool = True) -> Optional[str]:
    """The W&B group of a sweep: its ``sweep=`` (or ``hparams_search=``) option, else the
    multirun folder's name; a single run has none."""
    for group in ("sweep", "hparams_search"):
        if choices.get(group):
            return str(choices[group])
    return Path(str(sweep_dir)).name if multirun and sweep_dir else None


def wandb_group(cfg: DictConfig) -> Optional[str]:
    """Runs of one sweep share a group (:func:`sweep_group` of the running Hydra job)."""
    multirun, sweep_dir, choices = _hydra_runtime()
    return sweep_group(choices, sweep_dir, multirun)


def wandb_name(cfg: DictConfig) -> str:
    """A short run name: ``AutoNorm-soft-Finetune-s0``."""
    from autonorm.config import method_name

    try:
        method = method_name(cfg)
    except Exception:  # an invalid config is reported by validate(), not here
        method = cfg.get("method") or cfg.norm.name
    return f"{method}-s{cfg.seed}"


def wandb_tags(cfg: DictConfig) -> list[str]:
    """norm, gate (AutoNorm only), transfer, data, model, then the config's ``tags``."""
    tags = [f"norm:{cfg.norm.name}"]
    if cfg.norm.name == "autonorm":
        tags.append(f"gate:{cfg.gate.kind}")
    tags += [f"transfer:{cfg.transfer.mode}", f"data:{cfg.data.name}", f"model:{cfg.model.name}"]
    if cfg.distill.mode != "none":
        tags.append(f"distill:{cfg.distill.mode}")
    tags += [str(t) for t in (cfg.get("tags") or [])]
    return [t[:64] for t in dict.fromkeys(tags)]  # W&B limits a tag to 64 characters


def _stable_id(run_dir: Path) -> str:
    """The same run folder always maps to the same W&B run (a resumed job continues it)."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]


def _build_wandb(cfg: DictConfig, lcfg: DictConfig, run_dir: Path) -> Optional[Any]:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    options = {
        "id": _stable_id(run_dir),
        "resume": "allow",
        "name": lcfg.get("name") or wandb_name(cfg),
        "group": lcfg.get("group") or wandb_group(cfg),
        "tags": wandb_tags(cfg) + [str(t) for t in (lcfg.get("tags") or [])],
        "job_type": str(cfg.get("task_name", "train")),
    }
    # `config` is also the name of instantiate's first parameter: pass it to the partial
    make = instantiate(lcfg, _partial_=True, **{k: v for k, v in options.items() if k not in ("tags",)})
    config = OmegaConf.to_container(cfg, resolve=True)
    for attempt in ("as configured", "offline"):
        try:
            # the mode of this attempt, explicitly: W&B's process-wide settings may hold an earlier run's
            logger = make(config=config, tags=options["tags"], mode=os.environ["WANDB_MODE"])
            init = getattr(logger, "_wandb_init", {})
            if init.get("anonymous", False) is None:  # Lightning passes anonymous=None; wandb warns about any value
                init.pop("anonymous")
            logger.experiment  # start the W&B run now, so a failure is handled here and not mid-fit
            return logger
        except Exception as exc:
            if attempt == "offline" or os.environ.get("WANDB_MODE") == "offline":
                log.warning("W&B could not start (%s: %s); the run goes on without it.", type(exc).__name__, exc)
                return None
            # no key or no network: keep the W&B run on disk, to `wandb sync` later
            log.warning("W&B could not start online (%s: %s); logging offline instead.", type(exc).__name__, exc)
            os.environ["WANDB_MODE"] = "offline"
    return None


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """The ``logger`` group's loggers for the run in ``run_dir``."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None:
            continue
        lg = _build_wandb(cfg, lcfg, Path(run_dir)) if name == "wandb" else instantiate(lcfg)
        if lg is not None:
            loggers.append(lg)
    return loggers


def _wandb_loggers(loggers: Sequence[Any]) -> list[Any]:
    return [lg for lg in loggers if lg.__class__.__name__ == "WandbLogger"]


def log_plots(loggers: Sequence[Any], images: Mapping[str, Path]) -> None:
    """Each plot under its own W&B key (``plots/<name>``), so each has its own panel."""
    for lg in _wandb_loggers(loggers):
        for key, path in images.items():
            try:
                lg.log_image(key=f"plots/{key}", images=[str(path)], caption=[Path(path).name])
            except Exception as exc:  # a plot that W&B cannot take must not fail the run
                log.warning("W&B could not log plot %s: %s", key, exc)


def finish(loggers: Sequence[Any], results: Mapping[str, Any], best_path: Optional[str]) -> list[str]:
    """Close the W&B runs: summary numbers, this run's table row, the best checkpoint as an
    artifact. Returns what the user should know (the ``wandb sync`` command of an offline run).
    Never fails the run."""
    notes: list[str] = []
    for lg in _wandb_loggers(loggers):
        try:
            run = lg.experiment
        except Exception as exc:
            log.warning("W&B finishing step failed (%s); the run's files are intact.", exc)
            continue
        try:
            import wandb

            scalars = {k: v for k, v in results.items() if isinstance(v, (int, float, str))}
            run.summary.update(scalars)
            # this run's row of the baseline table; W&B merges the rows of a group's runs
            run.log({"results_table": wandb.Table(columns=list(scalars), data=[list(scalars.values())])})
            if best_path:
                art = wandb.Artifact(f"model-{run.id}", type="model")
                art.add_file(best_path)
                run.log_artifact(art)
        except Exception as exc:
            log.warning("W&B finishing step failed (%s); the run's files are intact.", exc)
        try:  # always close the run, also after a failed step above, so that its records are written
            offline = run.settings.mode in ("offline", "dryrun")
            sync_dir = Path(run.dir).parent
            run.finish()
            if offline:
                notes.append(f"W&B (offline): upload with `wandb sync {sync_dir}`")
        except Exception as exc:
            log.warning("W&B could not close its run (%s); the run's files are intact.", exc)
    _close_wandb_files(loggers)
    return notes


def _close_wandb_files(loggers: Sequence[Any]) -> None:
    """Wait until W&B's service has written and closed the finished runs' files.

    ``run.finish()`` only tells the service that the run is over; the service closes the run's
    ``run-*.wandb`` file later, on its own thread. Shutting the service down (``wandb.teardown``,
    which waits for it to exit) makes the offline file complete when the run returns, so
    ``wandb sync`` or a reader right after it sees every record. Not done while another W&B run
    of this process is still active (the service serves it too); the next run starts a new one.
    """
    if not _wandb_loggers(loggers):
        return
    try:
        import wandb

        if wandb.run is None:
            wandb.teardown()
    except Exception as exc:  # closing must not fail a finished run
        log.warning("W&B service did not shut down cleanly (%s); its run files may be incomplete.", exc)
