"""Reliability: exact mid-epoch resume after a hard kill, determinism, non-finite losses, bad input,
sweeps with a failing job, atomic checkpoints, and W&B without network.

Subprocess runs of ``train.py`` cost ~8 s of imports each, so most checks run in-process through
``autonorm.cli.run_job`` / ``train`` with the ``make_cfg`` fixture (real Hydra composition).
Test-only callbacks live in ``tests/reliability_helpers.py`` and are added with Hydra overrides
(``+callbacks.<name>._target_=reliability_helpers.<Class>``); ``tests/`` is put on ``PYTHONPATH``
for subprocesses. The torchvision download failing fast offline is covered by
``tests/test_data.py::test_download_failure_is_fast_and_actionable``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException

from autonorm import configs
from autonorm.cli import build_trainer, run_job, train
from autonorm.data import BatchLoader

from conftest import REPO

TESTS = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------ helpers


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("OMP_WAIT_POLICY", "passive")
    env.update(extra)
    return env


def _train_py(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )


def _only_run(root: Path) -> Path:
    runs = [p for p in (root / "runs" / "train").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


_METRICS = ("val_acc", "test_acc", "val_loss", "test_loss", "steps", "epochs")


def _metrics(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    return {k: results[k] for k in _METRICS}


# ------------------------------------------------------------------------ 1. mid-epoch resume


def _loader(**kw: Any) -> BatchLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(40) % 10
    args = dict(batch_size=4, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, drop_last=True, seed=3, crop_padding=2, flip=True)
    args.update(kw)
    return BatchLoader(x, y, **args)


def test_batch_loader_resumes_mid_epoch_with_the_same_random_draws():
    full = _loader()
    full.set_epoch(2)
    reference = list(full)
    assert len(reference) == 10

    first = _loader()
    first.set_epoch(2)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    assert (state["epoch"], state["batches"]) == (2, 4)

    resumed = _loader()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what Lightning does at the start of the restarted epoch
    rest = list(resumed)
    assert len(rest) == 6
    for (xa, ya), (xb, yb) in zip(rest, reference[4:]):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb)
    # the skip applies to that pass only: the next epoch is whole again
    assert len(list(resumed)) == 10 and resumed.state_dict()["batches"] == 10


def test_batch_loader_state_for_another_epoch_or_loader_is_not_skipped():
    saved = _loader()
    saved.set_epoch(0)
    it = iter(saved)
    next(it), next(it)
    state = saved.state_dict()

    later = _loader()
    later.load_state_dict(state)
    later.set_epoch(1)  # checkpoint taken at an epoch end: Lightning moves on to the next epoch
    assert len(list(later)) == 10

    other = _loader(batch_size=5)
    with pytest.warns(UserWarning, match="batch_size"):
        other.load_state_dict(state)
    other.set_epoch(0)
    assert len(list(other)) == 8  # epoch served again from its first batch


RESUME_ARGS = (
    "debug=fast",  # last.ckpt every 2 steps
    "norm=autonorm",
    "gate=gumbel",  # Gumbel noise from the global torch RNG
    "optim.lr=0.02",  # with this seed epoch 0 scores best: the best-checkpoint tracking matters
    "gate.features=mean",  # (with these gate options)
    "gate.tau_end_at=after_last",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "eval=none",
    "+callbacks.killer._target_=reliability_helpers.KillAtStep",
    "+callbacks.val_killer._target_=reliability_helpers.KillInValidation",
)

# (kill trigger env, expected last.ckpt after the kill: (global_step, loader epoch, batches served))
KILLS = [
    pytest.param({"KILL_IN_VALIDATION_OF_EPOCH": "0"}, (4, 0, 4), id="during-epoch0-validation"),
    pytest.param({"KILL_AT_STEP": "8"}, (8, 1, 2), id="epoch1-batch2", marks=pytest.mark.slow),
    pytest.param({"KILL_AT_STEP": "4"}, (4, 0, 4), id="epoch0-batch4", marks=pytest.mark.slow),
    pytest.param({"KILL_AT_STEP": "6"}, (6, 0, 6), id="after-epoch0", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kill,expected", KILLS)
def test_run_killed_mid_epoch_resumes_to_identical_results(tmp_path, kill, expected):
    """SIGKILL, then the same command again: results.json metrics and checkpoints bit-identical to a run never killed."""
    env = _env(OMP_NUM_THREADS="1")  # the reference and the killed run side by side, one core each
    ref_cmd = [sys.executable, "train.py", *RESUME_ARGS, f"paths.output_root={tmp_path / 'ref'}"]
    run_args = [*RESUME_ARGS, f"paths.output_root={tmp_path / 'run'}"]
    ref = subprocess.Popen(ref_cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed = _train_py(*run_args, env={**env, **kill})
        ref_out, _ = ref.communicate(timeout=300)
    finally:
        ref.kill()
    assert ref.returncode == 0, ref_out[-3000:]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    run = _only_run(tmp_path / "run")
    assert not (run / "COMPLETED").exists() and not (run / "results.json").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    fit = ckpt["loops"]["fit_loop"]
    (loader_state,) = fit["state_dict"]["combined_loader"]
    assert (ckpt["global_step"], loader_state["epoch"], loader_state["batches"]) == expected
    # the loader served exactly the batches trained on (Lightning prefetches none for a sized loader)
    assert loader_state["batches"] == fit["epoch_loop.batch_progress"]["current"]["ready"]

    resumed = _train_py(*run_args, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout

    ref_run = _only_run(tmp_path / "ref")
    assert _metrics(run) == _metrics(ref_run)
    for name in ("last.ckpt", "best.ckpt"):
        _assert_same_weights(run / "checkpoints" / name, ref_run / "checkpoints" / name)
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["global_step"] == 6  # epoch 0 stays best


def test_run_interrupted_in_process_resumes_to_identical_results(make_cfg, tmp_path, monkeypatch):
    """Faster in-process variant: an exception after step 4 of 6 (epoch 1, batch 1), then the same config again."""
    args = ("norm=autonorm", "gate=gumbel", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "eval=none",
            "+callbacks.stop._target_=reliability_helpers.RaiseAtStep")
    ref = make_cfg(*args, run_dir=tmp_path / "ref")
    train(ref)
    interrupted = make_cfg(*args, run_dir=tmp_path / "run")
    monkeypatch.setenv("RAISE_AT_STEP", "4")
    with pytest.raises(RuntimeError, match="interrupted at step 4"):
        train(interrupted)
    monkeypatch.delenv("RAISE_AT_STEP")
    run = tmp_path / "run"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    again = make_cfg(*args, run_dir=run)
    train(again)
    assert _metrics(run) == _metrics(tmp_path / "ref")
    _assert_same_weights(run / "checkpoints" / "last.ckpt", tmp_path / "ref" / "checkpoints" / "last.ckpt")


def test_resume_without_rng_state_would_differ(make_cfg, tmp_path, monkeypatch):
    """The RNGStateCallback is what makes the Gumbel noise after a resume match (control experiment)."""
    args = ("norm=autonorm", "gate=gumbel", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "eval=none", "~callbacks.rng_state",
            "+callbacks.stop._target_=reliability_helpers.RaiseAtStep")
    ref = make_cfg(*args, run_dir=tmp_path / "ref")
    train(ref)
    monkeypatch.setenv("RAISE_AT_STEP", "4")
    with pytest.raises(RuntimeError):
        train(make_cfg(*args, run_dir=tmp_path / "run"))
    monkeypatch.delenv("RAISE_AT_STEP")
    train(make_cfg(*args, run_dir=tmp_path / "run"))
    a, b = _state(tmp_path / "run" / "checkpoints" / "last.ckpt"), _state(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- 2. determinism


def test_same_seed_same_results_different_seed_different(make_cfg, tmp_path):
    args = ("norm=autonorm", "gate=gumbel", "eval=none", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = make_cfg(*args, f"seed={seed}", run_dir=tmp_path / name)
        train(cfg)
        runs[name] = tmp_path / name
    assert _metrics(runs["a"]) == _metrics(runs["b"])
    _assert_same_weights(runs["a"] / "checkpoints" / "last.ckpt", runs["b"] / "checkpoints" / "last.ckpt")
    ma, mc = _metrics(runs["a"]), _metrics(runs["c"])
    assert (ma["val_loss"], ma["test_loss"]) != (mc["val_loss"], mc["test_loss"])
    sa, sc = _state(runs["a"] / "checkpoints" / "last.ckpt"), _state(runs["c"] / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


# ------------------------------------------------------------------------ 3. non-finite loss


def _expect_user_error(cfg, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_job(cfg, train)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    run = Path(cfg.paths.output_dir)
    assert not (run / "results.json").exists() and not (run / "COMPLETED").exists()
    return err


def _assert_last_ckpt_good(run: Path, step: int) -> None:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == step
    assert _all_finite(ckpt["state_dict"])


def test_nan_loss_stops_at_that_step_naming_the_last_good_checkpoint(make_cfg, capsys):
    cfg = make_cfg("eval=none", "+callbacks.poison._target_=reliability_helpers.PoisonBatchAtStep", "+callbacks.poison.step=3")
    err = _expect_user_error(cfg, capsys)
    run = Path(cfg.paths.output_dir)
    assert "training loss is nan at step 3" in err
    assert f"{run / 'checkpoints' / 'last.ckpt'} (step 2)" in err
    assert "training loss is nan at step 3" in (run / "FAILED").read_text()
    _assert_last_ckpt_good(run, 2)


def test_huge_learning_rate_fails_cleanly_and_keeps_finite_checkpoint(make_cfg, capsys):
    cfg = make_cfg("eval=none", "optim.lr=1e30")
    err = _expect_user_error(cfg, capsys)
    run = Path(cfg.paths.output_dir)
    assert re.search(r"training loss is (nan|inf|-inf) at step \d+ \(epoch 0\)", err), err
    assert "Last good checkpoint:" in err and "optim.lr" in err
    assert (run / "FAILED").exists()
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():
        assert _all_finite(_state(last))


def test_non_finite_weights_are_never_checkpointed(make_cfg, capsys):
    cfg = make_cfg("eval=none", "+callbacks.poison._target_=reliability_helpers.PoisonWeightsAfterStep", "+callbacks.poison.step=4")
    err = _expect_user_error(cfg, capsys)
    run = Path(cfg.paths.output_dir)
    assert "weights became non-finite (model.head.bias)" in err and "at step 4" in err
    assert "(step 2)" in err
    _assert_last_ckpt_good(run, 2)


# ---------------------------------------------------------------------------------- 4. bad input


def _npz(root: Path, **override: Any) -> Path:
    """``root/mnist.npz``: a small valid MNIST-format archive with ``override`` arrays replaced."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (120, 28, 28, 1), dtype=np.uint8),
        "y_train": np.arange(120) % 10,
        "x_test": rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8),
        "y_test": np.arange(40) % 10,
        "classes": np.array([str(i) for i in range(10)]),
    }
    arrays.update(override)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "mnist.npz", **arrays)
    return root


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    """Bad data roots and checkpoints, built once for all bad-input cases."""
    from autonorm.phases import _task_kwargs
    from autonorm.tasks import ClassificationTask

    base = tmp_path_factory.mktemp("bad_inputs")
    paths = {
        "good_data": _npz(base / "good_data"),
        "wrong_shape": _npz(base / "wrong_shape", x_train=np.zeros((120, 28, 28), np.uint8)),
        "wrong_dtype": _npz(base / "wrong_dtype", x_train=np.zeros((120, 28, 28, 1), np.float32)),
        "labels_high": _npz(base / "labels_high", y_train=np.arange(120) % 10 + 3),
        "labels_negative": _npz(base / "labels_negative", y_test=np.arange(40) % 10 - 1),
        "wrong_size": _npz(base / "wrong_size", x_train=np.zeros((120, 30, 30, 1), np.uint8), x_test=np.zeros((40, 30, 30, 1), np.uint8)),
    }
    trunc = _npz(base / "truncated")
    blob = (trunc / "mnist.npz").read_bytes()
    (trunc / "mnist.npz").write_bytes(blob[: len(blob) // 2])
    paths["truncated"] = trunc
    blocker = base / "a_file"
    blocker.write_text("not a folder")
    paths["unwritable"] = blocker / "data"  # cannot be created: its parent is a file
    paths["empty_root"] = base / "empty_root"

    def save_task(name: str, *overrides: str) -> Path:
        cfg = configs.compose(overrides)
        task = ClassificationTask(**_task_kwargs(cfg, 10))
        path = base / f"{name}.ckpt"
        torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "global_step": 0}, path)
        return path

    real = save_task("real", "norm=autonorm")
    blob = real.read_bytes()
    paths["truncated_ckpt"] = base / "truncated.ckpt"
    paths["truncated_ckpt"].write_bytes(blob[: len(blob) // 2])
    paths["other_arch_ckpt"] = save_task("other_arch", "norm=autonorm", "model=vit_tiny")
    paths["other_norm_ckpt"] = save_task("other_norm", "norm=ln")
    paths["missing_ckpt"] = base / "nope" / "missing.ckpt"
    return paths


MNIST = ("data=mnist", "data.val_size=20")
FINETUNE = ("transfer=finetune", "data=cifar10_mini")

# (id, overrides, substrings the message must contain)
BAD_INPUTS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("lr-negative", ("optim.lr=-1",), ("optim.lr", "> 0")),
    ("lr-zero", ("optim.lr=0",), ("optim.lr",)),
    ("lr-not-a-number", ("optim.lr=fast",), ("optim.lr",)),
    ("tau-start-zero", ("gate=gumbel", "gate.tau_start=0"), ("gate.tau_start",)),
    ("tau-end-negative", ("gate=gumbel", "gate.tau_end=-0.5"), ("gate.tau_end",)),
    ("alpha-init-zero", ("norm=dyt", "norm.alpha_init=0"), ("norm.alpha_init",)),
    ("alpha-init-negative", ("norm=autonorm", "norm.alpha_init=-2"), ("norm.alpha_init",)),
    ("lambda-init-out-of-range", ("norm=afn", "norm.lambda_mu_init=99"), ("norm.lambda_mu_init",)),
    ("batch-size-zero", ("data.batch_size=0",), ("data.batch_size",)),
    ("batch-size-larger-than-data", ("data.batch_size=100000",), ("batch_size", "100000")),
    ("epochs-zero", ("trainer.max_epochs=0",), ("trainer.max_epochs",)),
    ("epochs-not-a-number", ("trainer.max_epochs=many",), ("trainer.max_epochs",)),
    ("seed-negative", ("seed=-1",), ("seed",)),
    ("img-size-28", ("model.img_size=28",), ("model.img_size",)),
    ("patch-size-not-dividing", ("model.patch_size=5",), ("model.patch_size",)),
    ("conv-stem-patch-not-power-of-two", ("model.stem=conv", "model.patch_size=1"), ("model.patch_size", "power of two")),
    ("unknown-stem", ("model.stem=hexagon",), ("model.stem",)),
    ("unknown-attention", ("model.attention=flash",), ("model.attention",)),
    ("pretrained-missing", (*FINETUNE, "transfer.pretrained={missing_ckpt}"), ("{missing_ckpt}", "not found")),
    ("pretrained-truncated", (*FINETUNE, "transfer.pretrained={truncated_ckpt}"), ("{truncated_ckpt}", "unreadable")),
    ("pretrained-other-architecture", (*FINETUNE, "transfer.pretrained={other_arch_ckpt}"), ("{other_arch_ckpt}", "does not fit")),
    ("pretrained-other-norm", (*FINETUNE, "transfer.pretrained={other_norm_ckpt}"), ("{other_norm_ckpt}", "does not fit")),
    ("data-truncated", (*MNIST, "paths.data_root={truncated}"), ("{truncated}/mnist.npz", "truncated")),
    ("data-wrong-shape", (*MNIST, "paths.data_root={wrong_shape}"), ("x_train", "shape")),
    ("data-wrong-dtype", (*MNIST, "paths.data_root={wrong_dtype}"), ("x_train", "float32")),
    ("data-wrong-image-size", (*MNIST, "paths.data_root={wrong_size}"), ("30x30",)),
    ("labels-too-high", (*MNIST, "paths.data_root={labels_high}"), ("y_train", "outside the valid range")),
    ("labels-negative", (*MNIST, "paths.data_root={labels_negative}"), ("y_test", "outside the valid range")),
    ("val-size-too-large", (*MNIST[:1], "data.val_size=500", "paths.data_root={good_data}"), ("val_size",)),
    ("data-root-unwritable", ("data=mnist", "paths.data_root={unwritable}"), ("{unwritable}", "not writable")),
    ("data-missing-offline", ("data=mnist", "paths.data_root={empty_root}"), ("mnist.npz", "download")),
]


@pytest.mark.parametrize("overrides,needles", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_clear_error(make_cfg, capsys, bad_inputs, overrides, needles):
    fill = {k: str(v) for k, v in bad_inputs.items()}
    cfg = make_cfg("eval=none", *(o.format(**fill) for o in overrides))
    t0 = time.monotonic()
    err = _expect_user_error(cfg, capsys)
    assert time.monotonic() - t0 < 60  # e.g. an offline download gives up quickly
    assert err.strip().startswith("error:") and err.count("\n") < 10, err
    for needle in needles:
        assert needle.format(**fill) in err, err
    assert (Path(cfg.paths.output_dir) / "FAILED").exists()


@pytest.mark.parametrize("override", ["norm=bogus", "gate=bogus", "transfer=bogus", "data=bogus", "model=bogus", "distill=bogus"])
def test_unknown_group_option_is_hydras_error_listing_choices(override):
    with pytest.raises(MissingConfigException, match="Available options") as exc:
        configs.compose([override])
    assert override.split("=")[0] in str(exc.value)


def test_bad_input_through_train_py(tmp_path, bad_inputs):
    """The same policy end to end: Hydra errors exit 1, ours exit 2, neither shows a traceback."""
    common = ("debug=fast", "eval=none", f"paths.output_root={tmp_path}")
    hydra_err = _train_py(*common, "norm=bogus")
    assert hydra_err.returncode == 1
    assert "Available options" in hydra_err.stderr and "Traceback" not in hydra_err.stderr

    ours = _train_py(*common, *MNIST, f"paths.data_root={bad_inputs['truncated']}")
    assert ours.returncode == 2, ours.stderr[-3000:]
    assert "Traceback" not in ours.stderr and "truncated" in ours.stderr
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("COMPLETED"))
    assert len(list(tmp_path.rglob("FAILED"))) == 1


# --------------------------------------------------------------------------------------- 5. sweeps


def test_sweep_with_a_failing_job_goes_on_and_rerun_skips_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = ("-m", "debug=fast", "eval=none", "optim.lr=1e-3,-1", f"paths.output_root={tmp_path}", f"hydra.sweep.dir={sweep}")
    first = _train_py(*cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 2 and all(re.fullmatch(r"AutoNorm-soft_mnist_mini_s0-[0-9a-f]{8}", p.name) for p in runs), runs
    good = next(p for p in runs if (p / "COMPLETED").exists())
    bad = next(p for p in runs if p != good)
    assert (good / "COMPLETED").exists() and (good / "results.json").exists()
    assert "optim.lr must be > 0" in (bad / "FAILED").read_text()
    assert not (bad / "results.json").exists() and not (bad / "COMPLETED").exists()

    md = (sweep / "summary_results.md").read_text()
    assert "1 completed, 1 failed" in md and "optim.lr must be > 0" in md
    rows = {r["Run"]: r for r in csv.DictReader((sweep / "summary_results.csv").open())}
    statuses = {Path(k).name: v["Status"] for k, v in rows.items()}
    assert statuses == {good.name: "completed", bad.name: "failed"}

    stamp = (good / "results.json").stat().st_mtime_ns
    ckpt_stamp = (good / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    second = _train_py(*cmd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Already completed" in second.stdout
    assert (good / "results.json").stat().st_mtime_ns == stamp
    assert (good / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_stamp
    assert (bad / "FAILED").exists()
    assert "1 completed, 1 failed" in (sweep / "summary_results.md").read_text()


# ------------------------------------------------------------------------------ 6. atomic outputs


def test_atomic_checkpoint_io_leaves_no_partial_file(tmp_path, monkeypatch):
    from autonorm.callbacks import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, target)
    good = target.read_bytes()

    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # what a killed writer leaves: the first half of the bytes
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 4}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert target.read_bytes() == good  # the previous checkpoint, intact
    assert io.load_checkpoint(target)["global_step"] == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left

    fresh = tmp_path / "other" / "last.ckpt"
    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {}}, fresh)
    assert not fresh.exists() and list(fresh.parent.iterdir()) == []


def test_trainer_writes_checkpoints_through_atomic_io(make_cfg):
    from autonorm.callbacks import AtomicCheckpointIO

    trainer = build_trainer(make_cfg(), [], [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ----------------------------------------------------------------------------------- 7. no network


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline ``run-*.wandb`` file.

    Framing as in LevelDB's log format: a 7-byte file header (``:W&B``, magic, version), then
    32 KiB blocks of records, each with a 7-byte header (crc32, little-endian length, type:
    1 full, 2 first, 3 middle, 4 last fragment); block tails shorter than a header are padding.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, records, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


@pytest.mark.timeout(240)
def test_wandb_offline_run_needs_no_network_or_key(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=wandb", "eval=none")
    t0 = time.monotonic()
    train(cfg)
    assert time.monotonic() - t0 < 200
    run = Path(cfg.paths.output_dir)
    assert (run / "COMPLETED").exists()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run / "wandb").iterdir())
    (record_file,) = offline[0].glob("run-*.wandb")
    records = _wandb_records(record_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds and "exit" in kinds and "artifact" in kinds  # the best checkpoint as an artifact
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    steps = sorted({h["trainer/global_step"] for h in history if "train/loss" in h})
    assert steps == [0, 1, 2, 3]  # debug=fast: 4 steps, logged every step
    assert any("val/acc" in h for h in history)
    summary: dict[str, Any] = {}
    for r in records:
        if r.HasField("summary"):
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    results = json.loads((run / "results.json").read_text())
    assert summary["test_acc"] == pytest.approx(results["test_acc"])
    assert summary["val_acc"] == pytest.approx(results["val_acc"])
