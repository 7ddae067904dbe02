"""What a run prints: overrides and config path, phase budgets, one line per epoch off a
terminal, the summary table and the files written; and what it no longer prints."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pytorch_lightning as pl

from autonorm import console
from autonorm.cli import train


def test_a_run_prints_one_line_per_epoch_and_a_summary_without_noise(make_cfg, capsys) -> None:
    cfg = make_cfg("trainer.max_epochs=2", "eval.plots=false", "eval.profile=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    out = capsys.readouterr().out
    run = Path(cfg.paths.output_dir)
    # the config's path, not the config itself
    assert f"config: {run / 'config.yaml'}" in out
    assert "optim:" not in out and "weight_decay" not in out
    # stdout is not a terminal under pytest: one flushed line per epoch, accuracies in %
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all(re.search(r"val/acc \d+\.\d\d%", line) for line in epochs)
    # the summary: accuracies in %, unmeasured values as a dash, the files written
    assert re.search(r"test acc\s+\d+\.\d\d %", out)
    assert re.search(r"FLOPs / sample\s+—", out)  # eval.profile=false: not measured
    assert "results.json" in out and "checkpoints/best.ckpt" in out
    assert (run / ".lock").exists() and ".lock" not in out  # the folder's lock is bookkeeping, not a result
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "exists and is not empty" in m or "LeafSpec" in m], messages
    assert "Tip:" not in out


def test_print_config_shows_the_whole_config(make_cfg, capsys, tmp_path) -> None:
    cfg = make_cfg("extras.print_config=true")
    console.show_config(cfg, tmp_path / "config.yaml")
    out = capsys.readouterr().out
    assert "weight_decay:" in out and f"config: {tmp_path / 'config.yaml'}" in out


def test_phase_budgets_name_the_settings_each_phase_obeys(make_cfg) -> None:
    cfg = make_cfg("data=cifar10_mini", "transfer=finetune", "distill=kd", "trainer.max_epochs=1",
                   "transfer.pretrain.max_epochs=2", "distill.teacher.max_epochs=3")
    lines = console.phase_budgets(cfg)
    assert [line.split()[0] for line in lines] == ["pretraining", "teacher", "this"]
    assert "2 epochs" in lines[0] and "mnist_mini" in lines[0] and "transfer.pretrain" in lines[0]
    assert "3 epochs" in lines[1] and "distill.teacher" in lines[1]
    assert "1 epoch," in lines[2] and "cifar10_mini" in lines[2]


def test_progress_bar_depends_on_the_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(console.progress_bar(Tty()), pl.callbacks.RichProgressBar)
    assert isinstance(console.progress_bar(io.StringIO()), console.EpochLines)


def test_summary_rows_format_percentages_and_missing_values() -> None:
    rows = dict(console.summary_rows({"val_acc": 0.9123, "test_acc": None, "train_time_s": 12.34, "epochs": 1, "steps": 5, "flops_per_sample": 11_710_000}))
    assert rows["val acc"] == "91.23 %" and rows["test acc"] == "—"
    assert rows["train time"] == "12.3 s (1 epoch, 5 steps)"
    assert rows["FLOPs / sample"] == "11.71 M"


# ---- W&B (offline: no key, no network) ------------------------------------------------------
def test_wandb_run_is_named_grouped_and_tagged(make_cfg, tmp_path, monkeypatch) -> None:
    from autonorm.loggers import build_loggers, finish

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=wandb", "norm=autonorm", "gate=gumbel", "tags=[ablation]")
    loggers = build_loggers(cfg, tmp_path / "run")
    wb = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    assert len(wb) == 1 and any(type(lg).__name__ == "RunCSVLogger" for lg in loggers)
    run = wb[0].experiment
    assert run.name == "AutoNorm-gumbel-s0"
    assert {"norm:autonorm", "gate:gumbel", "transfer:none", "data:mnist_mini", "model:vit_micro", "ablation"} <= set(run.tags)
    notes = finish(loggers, {"val_acc": 0.5}, None)
    assert len(notes) == 1 and notes[0].startswith("W&B (offline): upload with `wandb sync ") and "offline-run-" in notes[0]


def test_wandb_without_a_key_falls_back_to_offline(make_cfg, tmp_path, monkeypatch) -> None:
    from autonorm.loggers import build_loggers, finish

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    loggers = build_loggers(make_cfg("logger=wandb"), tmp_path / "run")
    wb = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    assert len(wb) == 1 and wb[0].experiment.settings.mode == "offline"
    finish(loggers, {}, None)


def test_wandb_gets_each_plot_under_its_own_key_and_the_gradient_norms(make_cfg, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=wandb", "eval.profile=false", "eval.robustness=false", "callbacks.norm_state.every_n_steps=2")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    images = {p.name.rsplit("_", 2)[0] for p in run.glob("wandb/offline-run-*/files/media/images/plots/*.png")}
    assert {"curves", "attention", "grad_heatmap", "gates"} <= images
    header = (run / "metrics.csv").read_text().split("\n", 1)[0].split(",")
    assert any(c.startswith("grad_norm/blocks.0") for c in header) and any(c.startswith("gate/") for c in header)
    assert "wandb sync" in capsys.readouterr().out


def test_runs_of_one_sweep_share_a_group() -> None:
    from autonorm.loggers import sweep_group

    assert sweep_group({"sweep": "table_mini"}, "outputs/multirun/2026-01-01_10-00-00") == "table_mini"
    assert sweep_group({"sweep": None, "hparams_search": "optuna_norm"}, "x/y") == "optuna_norm"
    assert sweep_group({"sweep": None}, "outputs/multirun/2026-01-01_10-00-00") == "2026-01-01_10-00-00"
    assert sweep_group({}, "outputs/multirun/t", multirun=False) is None


def test_debug_overfit_and_profiler_configs_compose_and_validate(tmp_path) -> None:
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from autonorm import configs
    from autonorm.config import validate

    for option in ("overfit", "profiler"):
        cfg = configs.compose([f"debug={option}", f"paths.output_root={tmp_path}"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / option)
        validate(cfg)
        if option == "overfit":  # the same few un-augmented images every epoch
            assert cfg.data.train_subset == 4 * cfg.data.batch_size and not cfg.data.flip and cfg.data.crop_padding == 0
        else:
            assert type(instantiate(cfg.trainer.profiler)).__name__ == "SimpleProfiler"
