"""eval.py on any checkpoint, and the baseline table reaching W&B at the end of a sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from autonorm.cli import train

from conftest import REPO


def test_eval_py_writes_robustness_profile_plots_and_norm_weights(make_cfg, tmp_path):
    cfg = make_cfg("norm=autonorm", "gate=gumbel", "eval=none")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    out = tmp_path / "evalout"
    proc = subprocess.run(
        [sys.executable, "eval.py", f"ckpt_path={ckpt}", "eval.max_images=64", "eval.latency_batch_sizes=[1,4]",
         f"hydra.run.dir={out}", f"paths.output_root={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert 0 <= results["noise_acc"] <= 1 and 0 <= results["rotation_acc"] <= 1
    assert results["flops_per_sample"] > 0 and results["latency_ms_per_sample"] > 0
    for name in ("robustness.json", "profile.json", "attention_rollout.png", "gate_weights.png"):
        assert (out / name).exists(), name
    assert list(out.glob("norm_weights_*.pt"))
    if sys.platform.startswith("linux"):  # the entry point raised glibc malloc's thresholds, and the latency says so
        assert json.loads((out / "profile.json").read_text())["latency"]["malloc_tuned"] is True


def test_eval_py_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval.py", f"ckpt_path={tmp_path}/nope.ckpt", f"hydra.run.dir={tmp_path}/e"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_with_wandb_logs_the_baseline_table_offline(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "debug=fast", "eval=none", "logger=wandb", "norm=ln,dyt",
         f"paths.output_root={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table_runs = list((tmp_path / "sweep" / "wandb").glob("offline-run-*"))
    assert table_runs, "no offline W&B run for the table"
    tables = [p for r in table_runs for p in r.rglob("summary_results*.table.json")]
    assert tables, "the table was not logged"
    table = json.loads(tables[0].read_text())
    assert sorted(row[table["columns"].index("Method")] for row in table["data"]) == ["DyT", "LN"]
