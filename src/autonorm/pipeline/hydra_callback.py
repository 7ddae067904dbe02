"""Hydra callback: write the baseline table into the sweep folder when a multirun ends."""

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
        from autonorm.pipeline.table import write_table

        sweep_dir = Path(config.hydra.sweep.dir)
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
