"""End-to-end: configs compose and validate, train.py trains, checkpoints reload, errors are clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from autonorm import configs
from autonorm.cli import train
from autonorm.config import ConfigError, validate
from autonorm.tasks import load_model_checkpoint

from conftest import REPO

NORM_GATES = [("ln", "soft"), ("dyt", "soft"), ("autonorm", "soft"), ("autonorm", "gumbel"), ("afn", "soft"), ("afn", "gumbel")]


@pytest.mark.parametrize("norm,gate", NORM_GATES)
def test_every_norm_gate_config_validates(make_cfg, norm, gate):
    cfg = make_cfg(f"norm={norm}", f"gate={gate}")
    validate(cfg)
    assert cfg.norm.name == norm


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["optim.lr=-1"], "optim.lr"),
        (["optim.lr=0"], "optim.lr"),
        (["gate=gumbel", "gate.tau_start=0"], "gate.tau_start"),
        (["gate=gumbel", "gate.tau_end=-0.5"], "gate.tau_end"),
        (["gate.schedule=zigzag"], "gate.schedule"),
        (["norm=dyt", "norm.alpha_init=0"], "norm.alpha_init"),
        (["norm.alpha_init=-1"], "norm.alpha_init"),
        (["norm=afn", "norm.lambda_mu_init=99"], "norm.lambda_mu_init"),
        (["data.batch_size=0"], "data.batch_size"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
        (["model.patch_size=5"], "model.patch_size"),
        (["model.num_heads=3"], "model.embed_dim"),
        (["optim.label_smoothing=1.5"], "optim.label_smoothing"),
        (["resume=sometimes"], "resume"),
        (["norm.freeze_branch=both"], "norm.freeze_branch"),
    ],
)
def test_bad_values_fail_before_training_naming_the_key(make_cfg, overrides, key):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


@pytest.mark.parametrize("group", ["norm=bogus", "gate=bogus", "data=bogus", "model=bogus", "transfer=bogus"])
def test_unknown_group_option_lists_choices(group):
    with pytest.raises(MissingConfigException, match="Available options"):
        configs.compose([group])


@pytest.mark.parametrize("norm,gate", [("ln", "soft"), ("dyt", "soft"), ("autonorm", "gumbel"), ("afn", "soft")])
def test_train_runs_end_to_end_and_writes_the_run_folder(make_cfg, tmp_path, norm, gate):
    cfg = make_cfg(f"norm={norm}", f"gate={gate}", "eval.plots=false")
    metric = train(cfg)
    run = Path(cfg.paths.output_dir)
    results = json.loads((run / "results.json").read_text())
    assert (run / "COMPLETED").exists()
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "metrics.csv").exists()
    assert 0.0 <= results["test_acc"] <= 1.0 and 0.0 <= results["val_acc"] <= 1.0
    assert metric == pytest.approx(results["val_acc"])
    assert results["flops_per_sample"] and results["flops_per_sample"] > 0
    assert results["noise_acc"] is not None and results["rotation_acc"] is not None
    # a finished run is not trained again by the same command
    assert train(cfg) == pytest.approx(metric)


def test_model_summary_counts_the_flops_of_profile_json_and_changes_nothing(make_cfg, tmp_path, capsys):
    """The summary printed at the start of training gives the FLOPs profile.json reports (not
    Lightning's 0) and the frozen share, and its traced forward leaves the run bit-identical."""
    args = ("norm=autonorm", "gate=gumbel", "transfer=freeze", "data=cifar10_mini", "eval=none", "eval.profile=true")
    train(make_cfg(*args, "trainer.enable_model_summary=true", run_dir=tmp_path / "on"))
    out = capsys.readouterr().out
    train(make_cfg(*args, "trainer.enable_model_summary=false", run_dir=tmp_path / "off"))
    assert "FLOPs per image" not in capsys.readouterr().out
    assert "Total FLOPs" not in out
    results = json.loads((tmp_path / "on" / "results.json").read_text())
    flops = results["profile"]["flops_per_sample"] if "profile" in results else results["flops_per_sample"]
    assert f"{flops / 1e6:.2f} MFLOPs per image" in out
    frozen = [line for line in out.splitlines() if line.endswith(" frozen")]
    assert len(frozen) == 2 and frozen[0].endswith(" 0 frozen") and not frozen[1].endswith(" 0 frozen")  # pretraining, then the frozen transfer
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for d in ("on", "off"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_reloads_to_identical_outputs(make_cfg):
    cfg = make_cfg("norm=autonorm", "gate=gumbel", "eval=none")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    a, b = load_model_checkpoint(ckpt), load_model_checkpoint(ckpt)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(tensor, state[f"model.{name}"], rtol=0, atol=0)


def test_trainer_compile_trains_inside_a_real_fit_on_cpu(make_cfg):
    """``trainer.compile=true`` (the GPU recipe's torch.compile) works on CPU too: the compiled
    model runs every step of the fit and evaluation, and the checkpoint holds the plain keys."""
    cfg = make_cfg("norm=autonorm", "gate=soft", "eval=none", "trainer.compile=true", "trainer.max_epochs=1")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    results = json.loads((run / "results.json").read_text())
    assert (run / "COMPLETED").exists() and 0.0 <= results["test_acc"] <= 1.0
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state and not any("_orig_mod" in k for k in state)


def _run_train_py(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "debug=fast", f"paths.output_root={tmp_path}", f"paths.data_root={tmp_path}/data", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_train_py_runs_afn_gumbel(tmp_path):
    proc = _run_train_py(tmp_path, "norm=afn", "gate=gumbel", "eval.plots=false", "eval.robustness=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").rglob("COMPLETED"))
    assert len(runs) == 1


def test_train_py_bad_value_is_a_clear_error_without_traceback(tmp_path):
    proc = _run_train_py(tmp_path, "optim.lr=-3")
    assert proc.returncode == 2
    assert "optim.lr must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs").rglob("results.json"))


def test_time_to_accuracy_recipe_writes_its_curve(make_cfg):
    cfg = make_cfg("experiment=fast_mnist", "data=mnist_mini", "eval=none", "trainer.max_epochs=2")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = (run / "time_to_accuracy.csv").read_text().strip().splitlines()
    assert rows[0] == "epoch,step,train_time_s,wall_s,test_acc" and len(rows) == 3
    times = [float(r.split(",")[2]) for r in rows[1:]]
    walls = [float(r.split(",")[3]) for r in rows[1:]]
    assert 0 < times[0] < times[1]
    assert times[0] < walls[0] < walls[1]  # the job's wall time includes start-up and data loading
    assert (run / "time_to_accuracy.png").stat().st_size > 1000
