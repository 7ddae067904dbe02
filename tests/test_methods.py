"""The methods behind the table's rows: names and legends, KD, AFN, gate features, DyT's alpha,
the Gumbel temperature options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from autonorm import configs
from autonorm.callbacks.norm_logging import dyt_slopes
from autonorm.config import method_name
from autonorm.norms import AFN, AutoNorm, DyT, GumbelGate, deploy_model
from autonorm.norms.autonorm import token_summary
from autonorm.phases import build_task
from autonorm.tasks import DistillTask, kd_loss

from conftest import CONF

ROWS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("fast_"))
EXPECTED_ROWS = {
    "LN-Finetune", "LN-Freeze", "DyT-Finetune", "DyT-Freeze", "AutoNorm-soft-Finetune", "AutoNorm-soft-Freeze",
    "AutoNorm-gumbel-Finetune", "AutoNorm-gumbel-Freeze", "AFN-Finetune", "AFN-Freeze", "OnlyDyT", "OnlyLayerNorm",
    "AutoNorm-soft-Finetune-KD", "Teacher",
}


# ---------------------------------------------------------------- rows
def test_every_norm_has_both_transfer_modes_and_rows_are_the_table():
    assert EXPECTED_ROWS <= set(ROWS)
    for sweep in ("table_mini", "table_full"):
        listed = configs.compose([f"sweep={sweep}"], return_hydra_config=True).hydra.sweeper.params.experiment
        assert set(listed.split(",")) == set(ROWS), sweep


@pytest.mark.parametrize("row", ROWS)
def test_row_name_is_derived_from_its_config_and_has_a_legend(make_cfg, row):
    cfg = make_cfg(f"experiment={row}")
    assert not cfg.get("method")  # the name is derived, not written down a second time
    assert method_name(cfg) == row
    legend = cfg.get("legend")
    assert isinstance(legend, str) and 20 < len(legend) < 240 and "\n" not in legend


def test_only_rows_keep_both_branches_blended(make_cfg):
    for row, frozen in (("OnlyDyT", "ln"), ("OnlyLayerNorm", "dyt")):
        task = build_task(make_cfg(f"experiment={row}", "transfer.pretrained=none", "transfer.mode=none"), 10)
        norms = [m for m in task.model.modules() if isinstance(m, AutoNorm)]
        assert norms and all(m.freeze_branch == frozen and m.gate_override is None for m in norms)
        assert all(p.requires_grad for m in norms for p in m.gate.parameters())


# ---------------------------------------------------------------- KD
def test_kd_hard_term_uses_the_runs_label_smoothing(make_cfg):
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    T, w, ls = 4.0, 0.7, 0.1
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    expected = (1 - w) * F.cross_entropy(s, y, label_smoothing=ls) + w * T * T * kl
    torch.testing.assert_close(kd_loss(s, t, y, T, w, label_smoothing=ls), expected)
    cfg = make_cfg("norm=ln")
    kwargs = dict(model_cfg=dict(cfg.model), norm_cfg=dict(cfg.norm), num_classes=10,
                  optim={**cfg.optim, "label_smoothing": ls}, mode="none")
    student = DistillTask(**kwargs, temperature=T, weight=w)
    teacher = torch.nn.Linear(3 * 32 * 32, 10)
    student.set_teacher(torch.nn.Sequential(torch.nn.Flatten(), teacher))
    x = torch.randn(6, 3, 32, 32)
    logits = student(x)
    got = student.training_loss(x, logits, y)
    with torch.no_grad():
        t_logits = student._teacher(x)
    torch.testing.assert_close(got, kd_loss(logits, t_logits, y, T, w, label_smoothing=ls))
    assert not torch.allclose(got, kd_loss(logits, t_logits, y, T, w))


# ---------------------------------------------------------------- AFN
def test_afn_lambdas_move_at_adams_rate():
    """Stored directly, a lambda moves by about lr per Adam step (through sigmoid(-5) it moved
    about 150 times slower)."""
    afn = AFN(64, dropout=0.0).train()
    opt = torch.optim.Adam(afn.parameters(), lr=1e-2)
    x = torch.randn(8, 16, 64) * 2 + 1
    before = float(afn.lambda_gamma)
    for _ in range(5):
        opt.zero_grad()
        (afn(x) * torch.linspace(-1, 1, 64)).square().mean().backward()
        opt.step()
    assert abs(float(afn.lambda_gamma) - before) > 0.02
    assert math.isclose(before, 1 / (1 + math.exp(5)), rel_tol=1e-6)


def test_afn_eval_stats_batch_adapts_at_test_time_and_running_does_not():
    torch.manual_seed(0)
    base = AFN(32, dropout=0.0)
    base.train()
    for _ in range(5):
        base(torch.randn(8, 10, 32))
    shifted = torch.randn(6, 10, 32) * 3 + 2  # a test batch from another distribution
    batch = AFN(32, dropout=0.0, eval_stats="batch")
    running = AFN(32, dropout=0.0, eval_stats="running")
    batch.load_state_dict(base.state_dict())
    running.load_state_dict(base.state_dict())
    yb, yr = batch.eval()(shifted), running.eval()(shifted)
    assert yb.mean(dim=(0, 1)).abs().max() < 0.3 and (yb.std(dim=(0, 1)) - 1).abs().max() < 0.3  # re-standardised
    assert yr.mean(dim=(0, 1)).abs().mean() > 1.0  # the shift survives with running statistics
    torch.testing.assert_close(running(shifted[:1]), yr[:1])  # per-sample with running statistics
    assert torch.equal(batch.running_mean, base.running_mean)  # eval never updates the buffers


def test_afn_batch_eval_stays_undeployed_and_matches(make_cfg):
    task = build_task(make_cfg("norm=afn", "transfer=none"), 10)
    model = task.model.eval()
    x = torch.randn(4, 3, 32, 32)
    deployed = deploy_model(model)
    assert any(isinstance(m, AFN) for m in deployed.modules())
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


# ---------------------------------------------------------------- gate features
def test_mean_scale_features_see_token_scale():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    x = x - x.mean(dim=1, keepdim=True)  # zero token mean: the "mean" summary is blind to scale
    big = 5.0 * x
    torch.testing.assert_close(token_summary(x, features="mean"), token_summary(big, features="mean"))
    h, h_big = token_summary(x, features="mean_scale"), token_summary(big, features="mean_scale")
    assert h.shape == (2, 32)
    torch.testing.assert_close(h_big[:, 16:] - h[:, 16:], torch.full((2, 16), math.log(5.0)), atol=1e-4, rtol=0)
    an = AutoNorm(16, gate="soft", gate_features="mean_scale")
    with torch.no_grad():
        an.gate.net.weight.fill_(0.05)
    assert not torch.allclose(an.gate_values(x), an.gate_values(big))
    for impl in ("eager", "fused"):
        an2 = AutoNorm(16, gate="soft", gate_features="mean_scale", impl=impl)
        an2.load_state_dict(an.state_dict())
        torch.testing.assert_close(an2(big), an(big), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- DyT alpha
def test_positive_alpha_stays_positive_and_slope_is_logged():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 16)
    target = -x  # reachable only through a negative slope
    out = {}
    for param in ("direct", "positive"):
        dyt = DyT(16, alpha_init=0.5, alpha_param=param)
        with torch.no_grad():
            dyt.weight.fill_(1.0)
        opt = torch.optim.SGD([p for n, p in dyt.named_parameters() if "weight" not in n], lr=0.5)
        for _ in range(60):
            opt.zero_grad()
            F.mse_loss(dyt(x), target).backward()
            opt.step()
        out[param] = float(dyt.alpha)
    assert out["direct"] < 0 < out["positive"]
    an = AutoNorm(16, alpha_param="positive")
    assert set(dyt_slopes(torch.nn.ModuleDict({"n": an}))) == {"slope/n"}
    assert dyt_slopes(torch.nn.ModuleDict({"n": an}))["slope/n"] == pytest.approx(0.5, rel=1e-5)


# ---------------------------------------------------------------- Gumbel temperature
class TauProbe(pl.Callback):
    def __init__(self) -> None:
        self.taus: list[float] = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        gate = next(m for m in pl_module.modules() if isinstance(m, GumbelGate))
        self.taus.append(float(gate.tau))


def _taus(make_cfg, *overrides: str) -> list[float]:
    cfg = make_cfg("norm=autonorm", "gate=gumbel", "data=mnist_mini", *overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule.num_classes)
    probe = TauProbe()
    sched = instantiate(cfg.callbacks.temperature)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[sched, probe])
    trainer.fit(task, datamodule=datamodule)
    return probe.taus


def test_gumbel_tau_end_at_and_transfer_start(make_cfg):
    last = _taus(make_cfg, "gate.tau_end_at=last_step")
    assert last[0] == pytest.approx(2.0) and last[-1] == pytest.approx(0.1)
    after = _taus(make_cfg, "gate.tau_end_at=after_last")
    assert after[0] == pytest.approx(2.0) and after[-1] > 0.1 * 1.5
    cont = _taus(make_cfg, "transfer=finetune", "data=cifar10_mini", "transfer.gumbel_tau=continue")
    assert cont == pytest.approx([0.1] * len(cont))
    restart = _taus(make_cfg, "transfer=finetune", "data=cifar10_mini")
    assert restart[0] == pytest.approx(2.0)


def test_gate_stats_script_reads_a_finished_run(make_cfg):
    import importlib.util

    from autonorm.cli import train

    from conftest import REPO

    cfg = make_cfg("norm=autonorm", "gate=soft", "eval=none")
    train(cfg)
    spec = importlib.util.spec_from_file_location("gate_stats", REPO / "scripts" / "gate_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stats = module.gate_stats(Path(cfg.paths.output_dir))
    assert stats["seed"] == 0 and "gate.features=mean_scale" in stats["config"]
    assert 0.0 <= stats["saturated"] <= 1.0 and 0.0 < stats["gate_mean"] < 1.0
    assert stats["min_abs_alpha"] > 0 and math.isfinite(stats["slope_mean"])
