"""AutoNorm with either squashing branch: LayerNorm blended with DyT (tanh) or Derf (erf)."""
from __future__ import annotations

import pytest
import torch

from autonorm.config import ConfigError, method_name, validate
from autonorm.norms import AutoNorm, Derf, DyT, LayerNorm, deploy_model, norm_state

B, N, C = 6, 5, 16


@pytest.mark.parametrize("gate", ["soft", "gumbel"])
@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_erf_squash_blends_layernorm_with_derf(gate: str, impl: str) -> None:
    an = AutoNorm(C, gate=gate, squash="erf", impl=impl, alpha_init=0.7)
    assert isinstance(an.dyt, Derf) and isinstance(an.ln, LayerNorm)
    with torch.no_grad():
        an.dyt.shift.fill_(0.2)
        an.dyt.weight.uniform_(0.5, 1.5)
    x = torch.randn(B, N, C) * 2
    for mode in ("train", "eval"):
        getattr(an, mode)()
        torch.manual_seed(1)
        y = an(x)
        a = an.last_gate.view(-1, 1, 1)
        expected = a * an.ln(x) + (1 - a) * (an.dyt.weight * torch.erf(0.7 * x + 0.2) + an.dyt.bias)
        torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    an.gate_override = 0.0
    torch.testing.assert_close(an(x), an.dyt(x), rtol=0, atol=0)
    # every parameter learns, the shift included
    an.gate_override = None
    an.train()
    (an(x.requires_grad_(True)) * torch.randn_like(x)).sum().backward()
    assert an.dyt.shift.grad is not None and an.dyt.shift.grad.abs() > 0


def test_erf_squash_logs_shift_deploys_as_is_and_tanh_stays_dyt() -> None:
    model = torch.nn.Sequential(AutoNorm(C, squash="erf"), AutoNorm(C))
    assert isinstance(model[1].dyt, DyT)
    state = norm_state(model)
    assert state["alpha/0"] == 0.5 and state["shift/0"] == 0.0 and "shift/1" not in state
    model.eval()
    deployed = deploy_model(model)
    assert isinstance(deployed[0], AutoNorm) and not isinstance(deployed[1], AutoNorm)
    x = torch.randn(B, N, C)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-6)
    assert "squash='erf'" in repr(model[0]) and "squash" not in repr(model[1])
    with pytest.raises(ValueError, match="squash must be one of"):
        AutoNorm(C, squash="sigmoid")


def test_erf_squash_config_names_its_row_and_is_validated(make_cfg) -> None:
    cfg = make_cfg("norm=autonorm", "norm.squash=erf", "gate=gumbel", "transfer=finetune")
    validate(cfg)
    assert method_name(cfg) == "AutoNorm-gumbel-erf-Finetune"
    assert method_name(make_cfg("norm=autonorm", "transfer=finetune")) == "AutoNorm-soft-Finetune"
    with pytest.raises(ConfigError, match=r"norm\.squash must be one of tanh, erf"):
        validate(make_cfg("norm=autonorm", "norm.squash=sigmoid"))
