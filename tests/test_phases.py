"""Transfer, freezing, distillation and the phase cache, on the embedded minis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from autonorm import phases
from autonorm.cli import train
from autonorm.phases import build_task, resolve_pretrained
from autonorm.pipeline.interrupt import RunInterrupted
from autonorm.tasks import TransferTask, kd_loss, model_state, read_checkpoint

from conftest import REPO


def test_kd_loss_equals_hand_computation():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    T, w = 3.0, 0.6
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()
    ce = -torch.log_softmax(s, -1)[torch.arange(5), y].mean()
    expected = (1 - w) * ce + w * T * T * kl
    torch.testing.assert_close(kd_loss(s, t, y, T, w), expected)


@pytest.fixture
def pretrained(make_cfg):
    """A cached MNIST-mini pretraining of an AutoNorm student (4 steps)."""
    cfg = make_cfg("norm=autonorm", "gate=gumbel", "transfer=freeze", "data=cifar10_mini")
    path = resolve_pretrained(cfg)
    return cfg, path


def test_transfer_copies_every_matching_weight_and_caches_pretraining(pretrained, make_cfg):
    cfg, path = pretrained
    task = build_task(cfg, num_classes=10)
    assert isinstance(task, TransferTask)
    source = model_state(read_checkpoint(path))
    for name, tensor in task.model.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(tensor, source[name], rtol=0, atol=0)
    # the second job needing the same pretraining does not train it again
    mtime = path.stat().st_mtime_ns
    assert resolve_pretrained(cfg) == path and path.stat().st_mtime_ns == mtime


def test_freeze_really_freezes(pretrained):
    cfg, _ = pretrained
    task = build_task(cfg, num_classes=10)
    frozen_names = [n for n, p in task.model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("patch_embed.") for n in frozen_names)
    assert any(n.startswith("blocks.0.") for n in frozen_names) and any(".gate." in n for n in frozen_names)
    assert not any(n.startswith("head.") for n in frozen_names)
    opt_params = {id(p) for g in task.param_groups() for p in g["params"]}
    frozen = {n: p for n, p in task.model.named_parameters() if not p.requires_grad}
    assert not opt_params & {id(p) for p in frozen.values()}
    before = {n: p.detach().clone() for n, p in frozen.items()}
    task.train()
    assert not task.model.patch_embed.training and not task.model.blocks[0].training
    opt = torch.optim.AdamW([p for g in task.param_groups() for p in g["params"]], lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(task(x), y).backward()
        opt.step()
    for n, p in frozen.items():
        assert p.grad is None
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)


class _InterruptAtStep(pl.Callback):
    """Stops training like SIGTERM does inside ``train`` (a :class:`RunInterrupted`) when step ``step`` is about to start."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RunInterrupted(signal.SIGTERM)


def test_interrupted_pretraining_resumes_to_the_weights_of_an_uninterrupted_one(make_cfg, tmp_path, monkeypatch, capsys):
    """A phase build stopped mid-epoch continues from its last.ckpt when next needed (Gumbel noise and
    data order included) and caches the weights an uninterrupted build caches, bit for bit."""
    args = ("norm=autonorm", "gate=gumbel", "transfer=finetune", "data=cifar10_mini")  # pretraining: 2 epochs x 4 steps
    ref = resolve_pretrained(make_cfg(*args, f"paths.cache_dir={tmp_path / 'ref'}"))
    cfg = make_cfg(*args, f"paths.cache_dir={tmp_path / 'run'}")
    callbacks = phases.phase_callbacks
    monkeypatch.setattr(phases, "phase_callbacks", lambda *a: [*callbacks(*a), _InterruptAtStep(5)])
    with pytest.raises(RunInterrupted):
        resolve_pretrained(cfg)
    monkeypatch.setattr(phases, "phase_callbacks", callbacks)
    (build,) = (tmp_path / "run" / "student").glob(".*.build")
    assert torch.load(build / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4  # end of epoch 0
    capsys.readouterr()

    path = resolve_pretrained(cfg)
    assert "Resuming the interrupted build" in capsys.readouterr().out
    assert not build.exists()
    got, want = model_state(read_checkpoint(path)), model_state(read_checkpoint(ref))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    stats = json.loads((path.parent / "fit.json").read_text())
    assert stats["steps"] == 8 and stats["epochs"] == 2 and stats["train_time_s"] > 0
    assert json.loads((path.parent / "meta.json").read_text())["resumed"] is True
    assert not (path.parent / "checkpoints").exists()  # the entry keeps model.ckpt, not the resume points


def test_a_run_ends_the_same_whether_its_pretraining_was_built_or_cached(make_cfg, tmp_path):
    """The first job of a norm trains its MNIST pretraining inside the job, the next ones find it
    cached: the transfer that follows must not depend on which (the build's random draws are undone)."""
    args = ("norm=autonorm", "gate=gumbel", "transfer=finetune", "data=cifar10_mini", "eval=none")
    train(make_cfg(*args, run_dir=tmp_path / "built"))  # cache miss: pretraining trained in this job
    train(make_cfg(*args, run_dir=tmp_path / "cached"))  # cache hit
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for d in ("built", "cached"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_pretrained_checkpoint_lists_keys(pretrained, make_cfg, tmp_path):
    _, path = pretrained
    cfg = make_cfg("norm=ln", "transfer=finetune", f"transfer.pretrained={path}")
    with pytest.raises(Exception, match="does not fit the model"):
        build_task(cfg, num_classes=10)


def test_distill_runs_with_cached_teacher(make_cfg):
    cfg = make_cfg("experiment=AutoNorm-soft-Finetune-KD", "data=cifar10_mini", "distill.teacher.model=vit_micro", "eval=none")
    train(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["method"] == "AutoNorm-soft-Finetune-KD" and results["distill"] == "kd"
    assert 0.0 <= results["teacher_test_acc"] <= 1.0  # the table shows it beside the KD row
    assert list((Path(cfg.paths.cache_dir) / "teacher").glob("*/DONE"))
    # the teacher starts, like the students, from an MNIST pretraining of its own model
    assert cfg.distill.teacher.pretrain_epochs > 0
    (meta,) = [json.loads(p.read_text())["meta"] for p in (Path(cfg.paths.cache_dir) / "teacher").glob("*/meta.json")]
    assert meta.get("init") and list((Path(cfg.paths.cache_dir) / "student").glob(f"{meta['init']}/DONE"))


def test_teacher_row_is_the_cached_kd_teacher_not_a_second_training(make_cfg, tmp_path):
    small = ("data=cifar10_mini", "distill.teacher.model=vit_micro", "eval=none")
    kd = make_cfg("experiment=AutoNorm-soft-Finetune-KD", *small)
    train(kd)
    entries = list((Path(kd.paths.cache_dir) / "teacher").glob("*/DONE"))
    assert len(entries) == 1
    stats = json.loads((entries[0].parent / "fit.json").read_text())

    # the row takes the teacher's model and budget from distill.teacher, whatever model= says
    row = make_cfg("experiment=Teacher", "model=vit_tiny", *small, run_dir=tmp_path / "teacher_row")
    train(row)
    assert len(list((Path(kd.paths.cache_dir) / "teacher").glob("*/DONE"))) == 1  # a cache hit
    results = json.loads((tmp_path / "teacher_row" / "results.json").read_text())
    assert results["method"] == "Teacher" and results["model"] == "vit_micro" and results["norm"] == "ln"
    assert results["test_acc"] is not None and results["val_acc"] is not None
    assert results["train_time_s"] == stats["train_time_s"] and results["steps"] == stats["steps"] > 0
    assert Path(results["best_checkpoint"]).parent == entries[0].parent
    assert not (tmp_path / "teacher_row" / "checkpoints" / "last.ckpt").exists()  # nothing trained here



def test_two_job_sweep_runs_end_to_end_and_writes_the_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "debug=fast", "data=cifar10_mini", f"paths.output_root={tmp_path}",
         "experiment=LN-Finetune,DyT-Finetune", "eval.plots=false", "eval.robustness=false", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "sweep" / "summary_results.md").read_text()
    assert "LN-Finetune" in md and "DyT-Finetune" in md
    assert (tmp_path / "sweep" / "summary_results.csv").exists()
    assert len(list((tmp_path / "cache" / "student").glob("*/DONE"))) == 2


def test_table_sweeps_use_the_recipe_model_and_the_teacher_row_is_the_kd_teacher(make_cfg):
    from autonorm.phases import reused_phase_config, teacher_config

    for sweep in ("table_mini", "table_full"):
        student = make_cfg(f"sweep={sweep}", "experiment=AutoNorm-soft-Finetune-KD")
        assert student.model.name == "vit_micro_conv" and student.model.stem == "conv"
        assert student.optim.label_smoothing == 0.1
        row = reused_phase_config(make_cfg(f"sweep={sweep}", "experiment=Teacher"))
        kd_teacher = teacher_config(student)
        assert row.model == kd_teacher.model and row.model.name == "vit_micro_conv"
        assert row.norm.name == kd_teacher.norm.name == "ln"
        assert row.trainer.max_epochs == kd_teacher.trainer.max_epochs == student.distill.teacher.max_epochs
        # the teacher is the stronger model: a larger budget than the students' and the same pretraining
        assert student.distill.teacher.max_epochs > student.trainer.max_epochs
        assert student.distill.teacher.pretrain_epochs == student.transfer.pretrain.max_epochs
