"""What a run prints: a short header, the phase budgets, one line per epoch off a terminal, and
an end-of-run summary. Everything else a job used to print (the whole config, library tips,
known-harmless library warnings) is either behind ``extras.print_config`` or kept out.

Only the console changes here: the log file (``<run>/<task>.log``) still receives every
Lightning message, and the full resolved config is always written to ``<run>/config.yaml``.
"""

from __future__ import annotations

import logging
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.trainer.states import TrainerFn

#: Library warnings that say nothing about the run: (message regex, category).
#: Lightning's pytree helper still uses a torch API that torch itself deprecated.
KNOWN_NOISE: tuple[tuple[str, type[Warning]], ...] = (
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", Warning),
    (r".*does not have many workers.*", Warning),  # the data sets are in memory: workers cost time
)
#: Logger names whose INFO messages (accelerator found, seed set, tips) stay in the log file only.
_LIBRARY_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")


def _echo(text: str = "") -> None:
    print(text, flush=True)  # flushed: logs of batch jobs show each line when it happens


# ---- noise -----------------------------------------------------------------------------------
class _LibraryInfoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_LIBRARY_LOGGERS)


def quiet(ignore_warnings: bool = False) -> None:
    """Keep library chatter off the console (``extras.ignore_warnings=true`` hides every warning)."""
    if ignore_warnings:
        warnings.filterwarnings("ignore")
    for message, category in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    # Hydra's console handler on the root logger, and Lightning's own when not run by Hydra
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    for handler in (h for lg in loggers for h in lg.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
                handler.addFilter(_LibraryInfoFilter())


# ---- the header --------------------------------------------------------------------------------
def command_line_overrides() -> list[str]:
    """The overrides the job was started with (empty when not run by Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not under Hydra (tests calling train() directly)
        return []


def show_config(cfg: DictConfig, config_file: Path) -> None:
    """The run's overrides and where its full config lives (the whole config with ``extras.print_config``)."""
    if (cfg.get("extras") or {}).get("print_config", False):
        _echo(OmegaConf.to_yaml(cfg, resolve=True))
    overrides = command_line_overrides()
    _echo(f"{cfg.get('method') or cfg.get('task_name')}: {' '.join(overrides) if overrides else '(no overrides)'}")
    _echo(f"  config: {config_file}")


# ---- phase budgets ---------------------------------------------------------------------------
def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _what(cfg: DictConfig) -> str:
    gate = f"-{cfg.gate.kind}" if cfg.norm.name == "autonorm" else ""
    return f"{cfg.model.name} {cfg.norm.name}{gate}"


def _budget(trainer: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    parts = [_plural(trainer.get("max_epochs"), "epoch")]
    if (trainer.get("max_steps") or -1) > 0:
        parts.append(f"at most {trainer['max_steps']} steps")
    if trainer.get("limit_train_batches") is not None:
        parts.append(f"limit_train_batches={trainer['limit_train_batches']}")
    subset = data.get("train_subset")
    parts.append(f"on {data.get('name')}" + (f" ({subset} images)" if subset else ""))
    return ", ".join(parts)


def phase_budgets(cfg: DictConfig) -> list[str]:
    """One line per phase this run trains, each with its own budget and where that budget is set."""
    from autonorm.phases import pretrain_config, teacher_config

    lines = []
    if cfg.get("reuse_phase") is None:
        if cfg.transfer.mode != "none" and str(cfg.transfer.get("pretrained", "auto")) == "auto":
            p = pretrain_config(cfg)
            lines.append(f"pretraining  {_what(p)}: {_budget(p.trainer, p.data)}  [transfer.pretrain.*; cached]")
        if cfg.distill.mode == "kd" and str(cfg.distill.teacher.get("pretrained", "auto")) == "auto":
            t = teacher_config(cfg)
            lines.append(f"teacher      {_what(t)}: {_budget(t.trainer, t.data)}  [distill.teacher.*; cached]")
        lines.append(f"this run     {_what(cfg)}: {_budget(cfg.trainer, cfg.data)}  [trainer.*, data.*]")
    else:  # the Teacher row: cfg is already the teacher's config
        lines.append(f"teacher      {_what(cfg)}: {_budget(cfg.trainer, cfg.data)}  [distill.teacher.*; cached, evaluated here]")
    return lines


def show_phase_budgets(cfg: DictConfig) -> None:
    """Print the budgets before any phase starts: trainer.* does not set the cached phases' budgets."""
    lines = phase_budgets(cfg)
    _echo("budgets:")
    for line in lines:
        _echo(f"  {line}")


# ---- progress ----------------------------------------------------------------------------------
def _fmt_metric(name: str, value: float) -> str:
    return f"{name} {100 * value:.2f}%" if name.endswith("acc") else f"{name} {value:.4g}"


class EpochLines(pl.callbacks.ProgressBar):
    """A progress "bar" for logs: one flushed line per epoch (and per validation-only run).

    Lightning redraws a terminal bar in place; written to a file it only appears at the end.
    This prints ``epoch 3/10  train/loss 0.41  val/acc 91.20%  12.3 s`` instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._t0 = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _line(self, trainer: pl.Trainer, head: str) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if k != "v_num"}
        text = "  ".join(_fmt_metric(k, v) for k, v in sorted(metrics.items()))
        _echo(f"{head}  {text}  {time.monotonic() - self._t0:.1f} s")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        self._line(trainer, f"epoch {trainer.current_epoch + 1}/{last}  step {trainer.global_step}")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # trainer.validate(), not fit's validation
            self._t0 = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._line(trainer, "validation")


def progress_bar(stream: Any = None) -> pl.callbacks.ProgressBar:
    """Lightning's rich bar on a terminal; one line per epoch in logs, ``nohup`` and batch jobs."""
    stream = stream or sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        return pl.callbacks.RichProgressBar()
    return EpochLines()


# ---- the end of a run ----------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * float(v):.2f} %"


def si(v: Any) -> str:
    """``22.93 M``, ``144.35 k``, ``650``: a count with an SI prefix (``—`` for None)."""
    if v is None:
        return "—"
    v = float(v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f}"


def summary_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The end-of-run table as (label, value) rows; values not measured show as ``—``."""
    time_s = results.get("train_time_s")
    epochs, steps = results.get("epochs"), results.get("steps")
    when = f" ({_plural(epochs, 'epoch')}, {_plural(steps, 'step')})" if epochs is not None and steps is not None else ""
    rows = [
        ("val acc", _pct(results.get("val_acc"))),
        ("test acc", _pct(results.get("test_acc"))),
        ("noise acc", _pct(results.get("noise_acc"))),
        ("rotation acc", _pct(results.get("rotation_acc"))),
    ]
    if results.get("c_mean_acc") is not None:
        rows.append(("CIFAR-10-C acc", _pct(results["c_mean_acc"])))
    rows += [
        ("train time", "—" if time_s is None else f"{float(time_s):.1f} s{when}"),
        ("FLOPs / sample", si(results.get("flops_per_sample"))),
        ("params", si(results.get("params"))),
    ]
    return rows


def written_files(run_dir: Path, skip: Iterable[str] = (".hydra", "wandb")) -> list[str]:
    """Files in the run folder, relative to it (Hydra's and W&B's internals and hidden
    bookkeeping such as the folder's ``.lock`` left out)."""
    skip = set(skip)
    return sorted(
        str(rel) for rel in (p.relative_to(run_dir) for p in Path(run_dir).rglob("*") if p.is_file())
        if rel.parts[0] not in skip and not any(part.startswith(".") for part in rel.parts)
    )


def show_summary(results: Mapping[str, Any], run_dir: Path, title: Optional[str] = None) -> None:
    """A small table of the run's numbers, then the files it wrote."""
    rows = summary_rows(results)
    width = max(len(label) for label, _ in rows)
    head = title or f"{results.get('method')}  seed {results.get('seed')}  ({results.get('data')}, {results.get('model')})"
    _echo()
    _echo(head)
    for label, value in rows:
        _echo(f"  {label:<{width}}  {value}")
    _echo(f"\nRun folder: {run_dir}")
    for line in textwrap.wrap("  ".join(written_files(run_dir)), width=100, break_long_words=False, break_on_hyphens=False):
        _echo(f"  {line}")
