"""Runs you can trust: every result belongs to its configuration and code.

One test (or a few) per failure listed in the README's "Resuming runs and what failures look
like": stale results, stale cache entries, typos, SIGTERM / SIGINT, two processes on one folder,
history across a resume, stuck folders, eval.py on any run's checkpoint, and bad values.
Subprocess runs cost ~8 s of imports each; most checks run in-process (real Hydra composition,
real ``Trainer.fit`` on the minis with ``debug=fast``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict

from autonorm import configs
from autonorm.cli import evaluate_checkpoint, run_job, train
from autonorm.pipeline import identity as identity_mod
from autonorm.pipeline.identity import make_identity, unused_overrides

from conftest import CONF, REPO

TESTS = Path(__file__).resolve().parent
SAFE = re.compile(r"[A-Za-z0-9._-]+")
QUICK = ("debug=fast", "eval=none", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("WANDB_MODE", "offline")
    env.update(extra)
    return env


def _py(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _compose_run(*overrides: str, conf: Path = CONF, config_name: str = "train") -> tuple[DictConfig, Path]:
    """The job config and the run folder Hydra would give ``python train.py <overrides>``."""
    full = configs.compose(overrides, config_name=config_name, return_hydra_config=True, config_dir=conf)
    HydraConfig.instance().set_config(full)
    run_dir = Path(str(OmegaConf.select(full, "hydra.run.dir")))
    cfg = OmegaConf.create(OmegaConf.to_container(full, resolve=False))
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(run_dir)
    return cfg, run_dir


def _user_error(cfg: DictConfig, capsys, job=train) -> str:
    with pytest.raises(SystemExit) as exc:
        run_job(cfg, job)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and err.strip().startswith("error:") and err.strip().count("\n") == 0, err
    return err


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(fh)]


# ----------------------------------------------------------------------------- stale results


def test_edited_train_yaml_is_another_run_and_never_resumes_the_old_one(tmp_path, capsys):
    """`optim.lr` 5e-3 -> 0.5 in conf/train.yaml, same command: a new folder; forced into the old one, refused."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    common = (*QUICK, f"paths.output_root={tmp_path / 'out'}")
    cfg_a, dir_a = _compose_run(*common, conf=conf)
    train(cfg_a)
    text = (conf / "train.yaml").read_text()
    (conf / "train.yaml").write_text(text.replace("lr: 5.0e-3", "lr: 0.5", 1))
    cfg_b, dir_b = _compose_run(*common, conf=conf)
    assert cfg_b.optim.lr == 0.5 and dir_b != dir_a and SAFE.fullmatch(dir_b.name)
    assert dir_a.name == make_identity(cfg_a)["name"] and dir_b.name == make_identity(cfg_b)["name"]

    with open_dict(cfg_b):  # the same command with an explicit run folder: hydra.run.dir=<old folder>
        cfg_b.paths.output_dir = str(dir_a)
    stamp = (dir_a / "results.json").stat().st_mtime_ns
    err = _user_error(cfg_b, capsys)
    assert "optim.lr: 0.005 -> 0.5" in err and "resume=never" in err and "change the overrides" in err
    assert (dir_a / "results.json").stat().st_mtime_ns == stamp and not (dir_a / "FAILED").exists()


def test_data_root_is_part_of_the_identity(tmp_path, monkeypatch):
    """A changed AUTONORM_DATA_ROOT, and `/x/a_b` vs `/x/a/b`, are other runs in other folders."""
    monkeypatch.setenv("AUTONORM_DATA_ROOT", str(tmp_path / "one"))
    _, one = _compose_run("data=mnist")
    monkeypatch.setenv("AUTONORM_DATA_ROOT", str(tmp_path / "two"))
    _, two = _compose_run("data=mnist")
    _, ab = _compose_run("data=mnist", "paths.data_root=/x/a_b")
    _, a_b = _compose_run("data=mnist", "paths.data_root=/x/a/b")
    assert len({one, two, ab, a_b}) == 4
    assert all(SAFE.fullmatch(p.name) for p in (one, two, ab, a_b))


def test_identity_is_stored_in_folder_checkpoint_and_results(make_cfg):
    cfg = make_cfg(*QUICK[1:])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    stored = json.loads((run / "identity.json").read_text())
    results = json.loads((run / "results.json").read_text())["identity"]
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["autonorm"]
    for key in ("config_hash", "config_hash_without_seed", "source_hash", "git_commit", "git_dirty", "name"):
        assert key in results and results[key] == stored[key] == ckpt["identity"][key]
    assert stored["config"]["optim.lr"] == cfg.optim.lr and "resume" not in stored["config"]
    assert ckpt["data"]["name"] == "mnist_mini" and len(ckpt["data"]["std"]) == 3
    other_seed = make_identity(make_cfg(*QUICK[1:], "seed=1"))
    assert other_seed["config_hash"] != stored["config_hash"]
    assert other_seed["config_hash_without_seed"] == stored["config_hash_without_seed"]


# ------------------------------------------------------------------------------- stale cache


def test_phase_cache_key_covers_trainer_settings_and_source(make_cfg, monkeypatch):
    from autonorm.phases import phase_key, pretrain_config

    def key(*overrides: str) -> str:
        return phase_key("student", pretrain_config(make_cfg("transfer=finetune", "data=cifar10_mini", *overrides)))[0]

    base = key()
    assert key("trainer.gradient_clip_val=0.5") != base
    assert key("+trainer.accumulate_grad_batches=2") != base
    assert key("transfer.frozen_blocks=1") == base  # not read by the pretraining
    monkeypatch.setattr(identity_mod, "source_files", lambda: {"norms/dyt.py": "edited"})
    assert key() != base  # an edited norm never reuses students built by the old code


def test_truncated_cache_checkpoint_is_rebuilt_under_the_lock(make_cfg):
    from autonorm.phases import resolve_pretrained

    cfg = make_cfg("transfer=finetune", "data=cifar10_mini")
    path = resolve_pretrained(cfg)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    again = resolve_pretrained(cfg)  # a miss: trained again, not a failure
    assert again == path and torch.load(path, weights_only=False)["global_step"] > 0


# ------------------------------------------------------------------------------------- typos


@pytest.mark.parametrize(
    "override",
    ["experiment=AutoNorm-finetune-KD", "experiment=nonexistent", "debug=fats", "sweep=table_mni", "hparams_search=optuna_nrom"],
)
def test_unknown_option_of_any_group_is_hydras_error_with_choices(override):
    with pytest.raises(MissingConfigException, match="Available options") as exc:
        configs.compose([override])
    assert override.split("=")[0] in str(exc.value)


def test_typo_through_train_py_trains_nothing(tmp_path):
    proc = _py("train.py", "experiment=nonexistent", "debug=fast", f"paths.output_root={tmp_path}")
    assert proc.returncode == 1 and "Available options in 'experiment'" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unused_settings_warn_and_are_not_part_of_the_identity(make_cfg):
    afn = make_identity(make_cfg("norm=afn"))
    afn_gumbel_cfg = make_cfg("norm=afn", "gate=gumbel")
    assert make_identity(afn_gumbel_cfg)["name"] == afn["name"] and "gumbel" not in afn["name"]
    (warning,) = unused_overrides(afn_gumbel_cfg, ["norm=afn", "gate=gumbel"])
    assert warning.startswith("gate=gumbel is not used") and "norm=autonorm" in warning
    plain = make_cfg("+transfer.frozen_blocks=3", "distill.teacher.model=vit_tiny")
    assert make_identity(plain)["config_hash"] == make_identity(make_cfg())["config_hash"]
    assert len(unused_overrides(plain, ["+transfer.frozen_blocks=3", "distill.teacher.model=vit_tiny"])) == 2
    assert not unused_overrides(make_cfg("norm=autonorm", "gate=gumbel"), ["norm=autonorm", "gate=gumbel"])


# ------------------------------------------------------------------------------ interruption


def test_sigterm_leaves_interrupted_exits_143_and_the_same_command_resumes(tmp_path, capsys):
    args = (*QUICK, "+callbacks.term._target_=reliability_helpers.SignalAtStep", f"paths.output_root={tmp_path}")
    first = _py("train.py", *args, env=_env(SIGNAL_AT_STEP="2"))
    assert first.returncode == 143, first.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "train").iterdir()
    assert "interrupted by SIGTERM" in (run / "INTERRUPTED").read_text()
    assert not (run / "COMPLETED").exists() and not (run / "results.json").exists()
    cfg, same = _compose_run(*args)  # the same command again (in-process: no second start-up)
    assert same == run
    train(cfg)
    assert "Resuming from" in capsys.readouterr().out
    assert (run / "COMPLETED").exists() and not (run / "INTERRUPTED").exists()
    assert json.loads((run / "results.json").read_text())["steps"] == 4


def test_sigint_leaves_interrupted_and_exits_130(make_cfg, monkeypatch, capsys):
    cfg = make_cfg(*QUICK[1:], "+callbacks.term._target_=reliability_helpers.SignalAtStep")
    monkeypatch.setenv("SIGNAL_AT_STEP", "2")
    monkeypatch.setenv("SIGNAL_AT_STEP_SIGNAL", "SIGINT")
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exc:
        run_job(cfg, train)
    assert exc.value.code == 130
    run = Path(cfg.paths.output_dir)
    assert "interrupted by SIGINT" in (run / "INTERRUPTED").read_text() and not (run / "FAILED").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back


@pytest.mark.slow  # two sweeps of three jobs in subprocesses
def test_sigterm_in_a_multirun_writes_the_table_listing_the_jobs_not_run(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", *QUICK, "optim.lr=1e-3,2e-3,3e-3", "+callbacks.term._target_=reliability_helpers.SignalAtStep",
            f"paths.output_root={tmp_path}", f"hydra.sweep.dir={sweep}")
    first = _py("train.py", *args, env=_env(SIGNAL_AT_STEP="2"))
    assert first.returncode == 143, first.stderr[-3000:]
    not_run = json.loads((sweep / "NOT_RUN.json").read_text())
    assert not_run["signal"] == "SIGTERM" and len(not_run["interrupted"]) == 1 and len(not_run["not_run"]) == 2
    md = (sweep / "summary_results.md").read_text()
    assert "Not run: the sweep was interrupted by SIGTERM" in md
    assert all(Path(p).name in md for p in not_run["not_run"])
    again = _py("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout and "3 completed" in (sweep / "summary_results.md").read_text()


def test_second_process_on_a_run_folder_fails_at_once_naming_the_pid(tmp_path, capsys):
    args = (*QUICK, "+callbacks.sleep._target_=reliability_helpers.SleepAtStep", f"paths.output_root={tmp_path}")
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=_env(SLEEP_AT_STEP="1", SLEEP_SECONDS="120"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs" / "train").glob("*/identity.json")) and time.monotonic() < deadline:
            time.sleep(0.5)
        (run,) = (tmp_path / "runs" / "train").iterdir()
        cfg, same = _compose_run(*args)  # the same command in a second process (this one)
        assert same == run
        err = _user_error(cfg, capsys)
        assert f"is in use by PID {first.pid}" in err
        assert not (run / "FAILED").exists() and first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_sweeps_launched_in_the_same_second_get_their_own_folders():
    code = "from autonorm.pipeline.identity import launch_stamp; print(launch_stamp())"
    env = {k: v for k, v in _env().items() if k != "AUTONORM_LAUNCH_STAMP"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    stamps = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert stamps[0] != stamps[1] and all(SAFE.fullmatch(s) for s in stamps)


# ------------------------------------------------------------------------------ history kept


def test_kill_during_the_final_evaluation_keeps_history_and_best_figures(make_cfg, tmp_path, monkeypatch):
    args = (*QUICK[1:], "trainer.max_epochs=2", "trainer.limit_train_batches=3", "+callbacks.stop._target_=reliability_helpers.RaiseAtTest")
    ref = make_cfg(*args, run_dir=tmp_path / "ref")
    train(ref)
    monkeypatch.setenv("RAISE_AT_TEST", "1")
    cfg = make_cfg(*args, run_dir=tmp_path / "run")
    with pytest.raises(RuntimeError, match="killed during the final evaluation"):
        train(cfg)
    monkeypatch.delenv("RAISE_AT_TEST")
    train(make_cfg(*args, run_dir=tmp_path / "run"))
    run, ref_run = tmp_path / "run", tmp_path / "ref"
    a, b = json.loads((run / "results.json").read_text()), json.loads((ref_run / "results.json").read_text())
    assert a["val_loss"] is not None
    assert {k: a[k] for k in ("val_acc", "val_loss", "test_acc", "steps")} == {k: b[k] for k in ("val_acc", "val_loss", "test_acc", "steps")}
    rows, ref_rows = _rows(run / "metrics.csv"), _rows(ref_run / "metrics.csv")
    assert len(rows) == len(ref_rows) > 6
    assert [r.get("train/loss") for r in rows] == [r.get("train/loss") for r in ref_rows]
    assert not (run / "metrics.before_resume.csv").exists()


def test_resume_mid_training_keeps_the_earlier_metric_rows(make_cfg, tmp_path, monkeypatch):
    args = (*QUICK[1:], "trainer.max_epochs=2", "trainer.limit_train_batches=3", "+callbacks.stop._target_=reliability_helpers.RaiseAtStep")
    train(make_cfg(*args, run_dir=tmp_path / "ref"))
    monkeypatch.setenv("RAISE_AT_STEP", "4")
    with pytest.raises(RuntimeError):
        train(make_cfg(*args, run_dir=tmp_path / "run"))
    monkeypatch.delenv("RAISE_AT_STEP")
    train(make_cfg(*args, run_dir=tmp_path / "run"))
    steps = sorted(int(r["step"]) for r in _rows(tmp_path / "run" / "metrics.csv") if "train/loss" in r)
    assert steps == sorted(int(r["step"]) for r in _rows(tmp_path / "ref" / "metrics.csv") if "train/loss" in r) == list(range(6))


# ---------------------------------------------------------------------------- stuck folders


def test_completed_marker_without_results_is_an_unfinished_run(make_cfg):
    cfg = make_cfg(*QUICK[1:])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / "results.json").unlink()
    train(make_cfg(*QUICK[1:]))
    assert json.loads((run / "results.json").read_text())["steps"] == 4


def test_truncated_last_ckpt_falls_back_to_the_newest_readable_one(make_cfg, tmp_path, monkeypatch, capsys):
    args = (*QUICK[1:], "trainer.max_epochs=2", "trainer.limit_train_batches=3", "+callbacks.stop._target_=reliability_helpers.RaiseAtStep")
    monkeypatch.setenv("RAISE_AT_STEP", "4")
    with pytest.raises(RuntimeError):
        train(make_cfg(*args))
    monkeypatch.delenv("RAISE_AT_STEP")
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    train(make_cfg(*args))
    out = capsys.readouterr().out
    assert "last.ckpt cannot be read (truncated?); resuming from best.ckpt (step 3)" in out
    assert json.loads((run / "results.json").read_text())["steps"] == 6


def test_truncated_last_ckpt_without_fallback_is_one_line_naming_resume_never(make_cfg, monkeypatch, capsys):
    args = (*QUICK[1:], "+callbacks.stop._target_=reliability_helpers.RaiseAtStep")
    monkeypatch.setenv("RAISE_AT_STEP", "3")
    with pytest.raises(RuntimeError):
        train(make_cfg(*args))
    monkeypatch.delenv("RAISE_AT_STEP")
    cfg = make_cfg(*args)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    damaged = last.read_bytes()[:1000]
    last.write_bytes(damaged)
    config_before = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    err = _user_error(cfg, capsys)
    assert "last.ckpt cannot be read" in err and "resume=never" in err
    assert last.read_bytes() == damaged and (Path(cfg.paths.output_dir) / "config.yaml").read_text() == config_before


def test_model_change_under_a_killed_run_is_refused_before_anything_is_written(make_cfg, monkeypatch, capsys):
    args = (*QUICK[1:], "+callbacks.stop._target_=reliability_helpers.RaiseAtStep")
    monkeypatch.setenv("RAISE_AT_STEP", "3")
    with pytest.raises(RuntimeError):
        train(make_cfg(*args))
    monkeypatch.delenv("RAISE_AT_STEP")
    run = Path(make_cfg().paths.output_dir)
    before = {p.name: p.read_bytes() for p in (run / "config.yaml", run / "identity.json", run / "checkpoints" / "last.ckpt")}
    err = _user_error(make_cfg(*args, "model.embed_dim=32"), capsys)
    assert "model.embed_dim: 64 -> 32" in err
    assert {p.name: p.read_bytes() for p in (run / "config.yaml", run / "identity.json", run / "checkpoints" / "last.ckpt")} == before


# ------------------------------------------------------------------------------------ eval.py


def test_eval_py_on_a_run_folder_checkpoint_uses_its_data_set(tmp_path):
    cfg, run = _compose_run(*QUICK, "data=cifar10_mini", "norm=afn", "gate=gumbel", f"paths.output_root={tmp_path}")
    train(cfg)  # = python train.py <the same overrides>
    ckpt = run / "checkpoints" / "best.ckpt"
    proc = _py("eval.py", f"ckpt_path={ckpt}", "eval=none", f"paths.output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (tmp_path / "runs" / "eval").iterdir()
    assert out.name.startswith(run.name) and SAFE.fullmatch(out.name)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["trained_on"] == results["data"] == "cifar10_mini"
    assert 0 <= results["test_acc"] <= 1 and results["identity"]["name"] == run.name


def _eval_cfg(*overrides: str, tmp_path: Path) -> DictConfig:
    cfg = configs.compose(["eval=none", f"paths.output_root={tmp_path}", *overrides], config_name="eval")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "evalout")
    return cfg


def test_eval_on_data_with_another_class_count_is_a_clear_error(make_cfg, tmp_path, capsys):
    from autonorm.phases import _task_kwargs
    from autonorm.tasks import ClassificationTask

    task = ClassificationTask(**_task_kwargs(make_cfg(), 3))
    ckpt = tmp_path / "three.ckpt"
    record = {"identity": None, "data": {"name": "mnist_mini", "num_classes": 3, "mean": [0.5] * 3, "std": [0.5] * 3}}
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "global_step": 0, "autonorm": record}, ckpt)
    err = _user_error(_eval_cfg(f"ckpt_path={ckpt}", "data=cifar10_mini", tmp_path=tmp_path), capsys, job=evaluate_checkpoint)
    assert "3-class head" in err and "cifar10_mini has 10 classes" in err
    err = _user_error(_eval_cfg(f"ckpt_path={ckpt}", tmp_path=tmp_path), capsys, job=evaluate_checkpoint)
    assert "3-class head" in err


# ------------------------------------------------------------------------------- bad values

BAD_VALUES = [
    pytest.param(("data.device=cuda",), "data.device", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    pytest.param(("trainer=gpu",), "trainer.accelerator", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    pytest.param(("data.train_subset=0",), "data.train_subset"),
    pytest.param(("data.crop_padding=-1",), "data.crop_padding"),
    pytest.param(("data.std=[0,1,1]",), "data.std"),
    pytest.param(("transfer=finetune", "transfer.frozen_blocks=99"), "transfer.frozen_blocks"),
    pytest.param(("transfer=finetune", "transfer.pretrained=/nope.ckpt"), "transfer.pretrained"),
    pytest.param(("+trainer.max_epoch=1",), "trainer.max_epoch"),
]


@pytest.mark.parametrize("overrides,key", BAD_VALUES)
def test_bad_value_is_one_line_naming_the_key_exit_2(make_cfg, capsys, overrides, key):
    err = _user_error(make_cfg("eval=none", *overrides), capsys)
    assert err.startswith(f"\nerror: {key} ") or f"error: {key} " in err, err
    assert not (Path(make_cfg().paths.output_dir) / "checkpoints").exists()


def test_a_pretrained_checkpoint_given_by_path_counts_by_its_content(make_cfg, tmp_path):
    ckpt = tmp_path / "student.ckpt"
    ckpt.write_bytes(b"one")
    first = make_identity(make_cfg("transfer=finetune", f"transfer.pretrained={ckpt}"))
    ckpt.write_bytes(b"two")
    assert make_identity(make_cfg("transfer=finetune", f"transfer.pretrained={ckpt}"))["config_hash"] != first["config_hash"]
