"""Beyond one process: DDP on CPU, joblib and submitit launchers, Optuna search (real runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class

from autonorm import configs

from conftest import REPO


def _train(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "train.py", *flags, "debug=fast", "eval=none", f"paths.output_root={tmp_path}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_optuna_search_runs_three_trials_and_stores_them(tmp_path):
    db = tmp_path / "study.db"
    proc = _train(tmp_path, "-m", "hparams_search=optuna_norm", "norm=autonorm", "gate=gumbel",
                  "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{db}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Best value" in proc.stdout + proc.stderr
    import optuna

    study = optuna.load_study(study_name="autonorm_autonorm", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3 and all(t.value is not None for t in study.trials)
    assert len({t.params["norm.alpha_init"] for t in study.trials}) == 3


def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    proc = _train(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "norm=ln,dyt", f"hydra.sweep.dir={tmp_path}/sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/COMPLETED"))
    assert len(done) == 2 and "Joblib" in (proc.stdout + proc.stderr)
    assert (tmp_path / "sweep" / "summary_results.md").exists()


@pytest.mark.parametrize("launcher", ["submitit_slurm", "submitit_local"])
def test_submitit_launcher_configs_compose_and_load(launcher):
    cfg = configs.compose([f"hydra/launcher={launcher}", "sweep=table_mini"], return_hydra_config=True)
    assert get_class(cfg.hydra.launcher._target_).__name__.endswith("Launcher")
    assert "experiment" in cfg.hydra.sweeper.params


def test_ddp_cpu_two_processes_train_and_only_rank_zero_writes(tmp_path):
    proc = _train(tmp_path, "trainer=ddp_cpu", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").rglob("results.json"))
    assert len(runs) == 1
    log = (runs[0].parent / "train.log").read_text()
    assert "MEMBER: 1/2" in log
    assert json.loads(runs[0].read_text())["test_acc"] is not None


def test_multirun_with_ddp_cpu_two_jobs(tmp_path):
    proc = _train(tmp_path, "-m", "trainer=ddp_cpu", "norm=ln,dyt", f"hydra.sweep.dir={tmp_path}/sweep", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = list((tmp_path / "sweep").glob("*/COMPLETED"))
    assert len(done) == 2
    stray = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not (p / "COMPLETED").exists()]
    assert not stray, f"stray output folders: {stray}"
