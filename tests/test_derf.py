"""Derf (Dynamic erf): the formula, its initialisation, its gradients and its arguments."""
from __future__ import annotations

import pytest
import torch
from autonorm import configs
from autonorm.norms import Derf, norm_state

C = 16


def test_derf_is_the_papers_formula_at_the_papers_init() -> None:
    derf = Derf(C)
    assert derf.alpha.shape == derf.shift.shape == (1,)
    assert float(derf.alpha) == 0.5 and float(derf.shift) == 0.0
    assert torch.equal(derf.weight, torch.ones(C)) and torch.equal(derf.bias, torch.zeros(C))
    with torch.no_grad():
        derf.alpha.fill_(0.8)
        derf.shift.fill_(-0.3)
        derf.weight.uniform_(0.5, 1.5)
        derf.bias.uniform_(-1, 1)
    x = torch.randn(4, 5, C) * 3
    assert torch.equal(derf(x), derf.weight * torch.erf(0.8 * x - 0.3) + derf.bias)
    # bounded: saturates at bias +- weight; the shift moves the centre to x = -shift / alpha
    big = torch.full((1, C), 1e4)
    torch.testing.assert_close(derf(big), (derf.weight + derf.bias).unsqueeze(0))
    torch.testing.assert_close(derf(-big), (derf.bias - derf.weight).unsqueeze(0))
    centre = torch.full((1, C), 0.3 / 0.8)
    torch.testing.assert_close(derf(centre), derf.bias.unsqueeze(0), atol=1e-6, rtol=0)


def test_derf_gradients_match_finite_differences_and_reach_every_parameter() -> None:
    derf = Derf(C, alpha_init=0.7, shift_init=0.2).double()
    x = torch.randn(3, 4, C, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: derf(t), (x,))
    (derf(x) * torch.randn_like(x)).sum().backward()
    for name, p in derf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_derf_logs_alpha_and_shift_per_norm_point() -> None:
    model = torch.nn.Sequential(Derf(C, shift_init=0.25))
    assert norm_state(model) == {"alpha/0": 0.5, "shift/0": 0.25}


@pytest.mark.parametrize("kwargs,key", [({"alpha_init": 0.0}, "alpha_init"), ({"shift_init": float("inf")}, "shift_init"), ({"eps": 0}, "eps")])
def test_derf_rejects_bad_arguments_naming_them(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Derf(C, **kwargs)


@pytest.mark.parametrize("row,transfer", [("Derf-Finetune", "finetune"), ("Derf-Freeze", "freeze")])
def test_derf_rows_compose_validate_and_join_the_table_sweeps(make_cfg, row: str, transfer: str) -> None:
    from omegaconf import open_dict

    from autonorm.config import method_name, validate

    cfg = make_cfg(f"experiment={row}")
    validate(cfg)
    assert cfg.norm.name == "derf" and cfg.transfer.mode == transfer and cfg.legend
    assert method_name(cfg) == row
    with open_dict(cfg):
        cfg.method = None
    assert method_name(cfg) == row  # the file name is the derived name
    for sweep in ("table_mini", "table_full"):
        sweep_cfg = configs.compose([f"sweep={sweep}"], return_hydra_config=True)
        assert row in sweep_cfg.hydra.sweeper.params.experiment.split(",")
