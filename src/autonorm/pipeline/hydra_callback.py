"""Hydra callback: write the baseline table into the sweep folder when a multirun ends.

When SIGTERM / SIGINT interrupted the sweep (:mod:`autonorm.pipeline.interrupt`), the jobs it
did not run are listed in ``NOT_RUN.json`` beside the table, and the process then exits with
``128 + signal`` (the same command resumes the interrupted job and runs the others).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("autonorm")


class WriteTableOnMultirunEnd(Callback):
    """Runs :func:`autonorm.pipeline.table.write_table` on ``hydra.sweep.dir``; never raises."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from autonorm.pipeline.interrupt import SWEEP

        self._write(config)
        if SWEEP.signal is not None:
            raise SystemExit(128 + SWEEP.signal)

    def _write(self, config: DictConfig) -> None:
        from autonorm.pipeline.interrupt import NOT_RUN_FILE, SWEEP
        from autonorm.pipeline.io import atomic_write_json
        from autonorm.pipeline.table import write_table

        sweep_dir = Path(config.hydra.sweep.dir)
        if SWEEP.signal is not None:
            atomic_write_json(sweep_dir / NOT_RUN_FILE, SWEEP.as_json())
            print(
                f"\nThe sweep was interrupted ({SWEEP.as_json()['signal']}): {len(SWEEP.not_run)} job(s) not run, "
                f"listed in {sweep_dir / NOT_RUN_FILE}; the same command with hydra.sweep.dir={sweep_dir} resumes it"
            )
        try:
            paths = write_table(sweep_dir)
            print(f"\nBaseline table written: {', '.join(str(p) for p in paths)}")
        except Exception as exc:  # the table can always be rebuilt with scripts/make_table.py
            log.warning("Could not write the baseline table for %s: %s", sweep_dir, exc)
            return
        if "wandb" in (config.get("logger") or {}):
            self._log_to_wandb(config, sweep_dir, paths[0])

    @staticmethod
    def _log_to_wandb(config: DictConfig, sweep_dir: Path, csv_path: Path) -> None:
        """The whole table as a W&B table in a run of its own (offline unless chosen otherwise)."""
        import csv
        import os

        try:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            with open(csv_path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            from autonorm.loggers import sweep_group

            run = wandb.init(project=config.logger.wandb.get("project", "autonorm"), dir=str(sweep_dir),
                             name=f"table-{sweep_dir.name}", job_type="baseline-table", reinit="finish_previous",
                             group=sweep_group(config.hydra.runtime.choices, str(sweep_dir)))
            run.log({"summary_results": wandb.Table(columns=rows[0], data=rows[1:])})
            run.finish()
        except Exception as exc:  # never let W&B break the sweep's end
            log.warning("Could not log the baseline table to W&B: %s", exc)
