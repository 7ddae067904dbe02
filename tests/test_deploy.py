"""Inference deployment (``VisionTransformer.deploy``) and the eager / fused / compiled norm
implementations (``impl=``): numerical equivalence, gradients, gradcheck, pickling, fallback."""
from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from autonorm.models.vit import VisionTransformer
from autonorm.norms import AFN, NORMS, AutoNorm, DyT, LayerNorm
from grad_helpers import assert_every_requires_grad_subset_matches, with_impl
from autonorm.kernels import fused
from autonorm.kernels.deploy import DeployedAffine, DeployedBlend, DeployedDispatch, DeployedDyT
from autonorm.norms import IMPLS
from autonorm.norms.autonorm import blend
from autonorm.norms.deploy import deploy_module
from autonorm.norms.dyt import dynamic_tanh

B, N, C = 6, 5, 8
TIGHT = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _vit(norm_layer) -> VisionTransformer:
    return VisionTransformer(
        img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, norm_layer=norm_layer
    )


def _mixing_gates(model: nn.Module) -> None:
    """Give every gate large random weights so that samples disagree (both branches occur)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AutoNorm):
                last = m.gate.net if isinstance(m.gate.net, nn.Linear) else m.gate.net[-1]
                last.weight.normal_(0.0, 3.0)
                last.bias.zero_()


def _images(b: int = 64) -> torch.Tensor:
    return torch.randn(b, 3, 16, 16) * 2


# ------------------------------------------------------------------------------------ deploy
@pytest.mark.parametrize(
    "kind",
    ["ln", "dyt", "autonorm_soft", "autonorm_soft_mlp", "autonorm_gumbel", "autonorm_gumbel_mlp", "afn"],
)
def test_deploy_matches_eval_model(kind: str) -> None:
    factories = {
        "ln": LayerNorm,
        "dyt": lambda d: DyT(d, alpha_init=0.8),
        "autonorm_soft": lambda d: AutoNorm(d, gate="soft"),
        "autonorm_soft_mlp": lambda d: AutoNorm(d, gate="soft", gate_hidden=8),
        "autonorm_gumbel": lambda d: AutoNorm(d, gate="gumbel"),
        "autonorm_gumbel_mlp": lambda d: AutoNorm(d, gate="gumbel", gate_hidden=8),
        "afn": lambda d: AFN(d, eval_stats="running"),  # foldable into an affine map
    }
    model = _vit(factories[kind])
    # Non-trivial affine parameters everywhere, mixing gates.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("weight", "bias", "alpha")) and p.dim() <= 1:
                p.add_(torch.randn_like(p) * 0.2)
    _mixing_gates(model)
    x = _images()
    if kind == "afn":
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 16, 16) * 1.5 + 0.3)
        assert all(float(m.num_batches_tracked) == 3 for m in model.modules() if isinstance(m, AFN))
    model.eval()
    with torch.no_grad():
        ref = model(x)
        feats = model.forward_features(x)
    deployed = model.deploy()
    assert deployed is not model and not deployed.training
    with torch.no_grad():
        out = deployed(x)
        torch.testing.assert_close(out, ref, **TIGHT)
        torch.testing.assert_close(deployed.forward_features(x), feats, **TIGHT)
    # the original is untouched
    assert any(isinstance(m, type(model.norm)) for m in model.modules())
    kinds = {type(m) for _, m in deployed.norm_points()}
    expected = {
        "ln": LayerNorm, "dyt": DeployedDyT, "afn": DeployedAffine,
        "autonorm_soft": DeployedBlend, "autonorm_soft_mlp": DeployedBlend,
        "autonorm_gumbel": DeployedDispatch, "autonorm_gumbel_mlp": DeployedDispatch,
    }[kind]  # fmt: skip
    assert kinds == {expected}
    if kind.startswith("autonorm_gumbel"):
        # Both branches were taken somewhere, and per point the dispatch equals the gate's argmax.
        mixed = [m for _, m in model.norm_points() if 0 < float(m.last_gate.sum()) < x.shape[0]]
        assert mixed, "test setup should make samples disagree at some norm point"
        for (_, orig), (_, dep) in zip(model.norm_points(), deployed.norm_points()):
            torch.testing.assert_close(dep.last_gate, orig.last_gate, atol=0, rtol=0)


def test_dispatch_per_norm_point_exact_with_both_choices() -> None:
    norm = AutoNorm(C, gate="gumbel").eval()
    with torch.no_grad():
        norm.gate.net.weight.zero_()
        norm.gate.net.weight[0, 0] = 5.0  # logit_LN - logit_DyT = 5 * h_0: sign of the mean of channel 0
        norm.dyt.alpha.fill_(1.3)
        norm.dyt.weight.normal_()
        norm.dyt.bias.normal_()
    x = torch.randn(16, N, C)
    x[::2, :, 0] += 3.0
    x[1::2, :, 0] -= 3.0
    dep = deploy_module(copy.deepcopy(norm))
    assert isinstance(dep, DeployedDispatch)
    with torch.no_grad():
        ref = norm(x)
        out = dep(x)
    assert torch.equal(norm.last_gate, torch.tensor([1.0, 0.0] * 8))
    torch.testing.assert_close(out, ref, **TIGHT)
    # LN minority (3 of 16) and DyT minority (3 of 16): both overwrite paths
    for ln_rows in (3, 13):
        xm = torch.randn(16, N, C)
        xm[:ln_rows, :, 0] += 3.0
        xm[ln_rows:, :, 0] -= 3.0
        with torch.no_grad():
            ref_m = norm(xm)
            assert int(norm.last_gate.sum()) == ln_rows
            torch.testing.assert_close(dep(xm), ref_m, **TIGHT)
    # all-one-branch batches take the shortcut paths
    with torch.no_grad():
        torch.testing.assert_close(dep(x[::2]), norm(x[::2]), **TIGHT)
        torch.testing.assert_close(dep(x[1::2]), norm(x[1::2]), **TIGHT)


def test_deploy_honours_gate_override() -> None:
    for value, kind in ((1.0, LayerNorm), (0.0, DeployedDyT), (0.3, DeployedBlend)):
        norm = AutoNorm(C, gate="gumbel").eval()
        norm.gate_override = value
        dep = deploy_module(copy.deepcopy(norm))
        assert isinstance(dep, kind)
        x = torch.randn(B, N, C)
        with torch.no_grad():
            torch.testing.assert_close(dep(x), norm(x), **TIGHT)


def test_deployed_model_pickles_and_keeps_eval_semantics() -> None:
    model = _vit(lambda d: AutoNorm(d, gate="gumbel"))
    _mixing_gates(model)
    model.train()
    deployed = model.deploy()
    assert model.training  # original untouched
    x = _images(8)
    with torch.no_grad():
        ref = deployed(x)
        again = pickle.loads(pickle.dumps(deployed))
        torch.testing.assert_close(again(x), ref, atol=0, rtol=0)
        deployed.train()  # deployed modules stay deterministic (eval argmax)
        torch.testing.assert_close(deployed(x), ref, atol=0, rtol=0)


@pytest.mark.parametrize("gate", ["soft", "gumbel"])
def test_deployed_is_frozen_but_differentiable_wrt_input(gate: str) -> None:
    model = _vit(lambda d: AutoNorm(d, gate=gate))
    _mixing_gates(model)
    model.eval()
    deployed = model.deploy()
    assert not any(p.requires_grad for p in deployed.parameters())
    x = _images(8)
    grads = []
    for m in (model, deployed):
        xx = x.clone().requires_grad_(True)
        m(xx).square().sum().backward()
        grads.append(xx.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- implementations
def _compare(ref: nn.Module, alt: nn.Module, x: torch.Tensor, seed: int = 0, **tol) -> None:
    tol = tol or TIGHT
    outs, grads = [], []
    for m in (ref, alt):
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(seed)  # same Gumbel noise for both
        y = m(xx)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        (y * g).sum().backward()
        outs.append(y.detach())
        grads.append({"x": xx.grad, **{n: p.grad for n, p in m.named_parameters() if p.requires_grad}})
        m.zero_grad(set_to_none=True)
    torch.testing.assert_close(outs[1], outs[0], **tol)
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]["x"] is not None
    for k in grads[0]:
        assert (grads[0][k] is None) == (grads[1][k] is None), k
        if grads[0][k] is None:  # e.g. the unused branch under gate_override 0 / 1
            continue
        torch.testing.assert_close(grads[1][k], grads[0][k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


def _norm_cases() -> list[tuple[str, nn.Module]]:
    return [
        ("dyt", DyT(C, alpha_init=0.7)),
        ("soft", AutoNorm(C, gate="soft")),
        ("soft_mlp", AutoNorm(C, gate="soft", gate_hidden=4)),
        ("gumbel", AutoNorm(C, gate="gumbel")),
        ("freeze_ln", AutoNorm(C, gate="soft", freeze_branch="ln")),
        ("afn", AFN(C)),
    ]


def _randomise(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("weight", "bias")) and p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    _mixing_gates(m)
    return m


@pytest.mark.parametrize("name", [n for n, _ in _norm_cases()])
def test_fused_matches_eager_forward_and_gradients(name: str) -> None:
    ref = _randomise(dict(_norm_cases())[name]).train()
    alt = with_impl(ref, "fused")
    x = torch.randn(B, N, C) * 1.5
    _compare(ref, alt, x)
    # eval mode (no saved tensors path) too
    with torch.no_grad():
        torch.testing.assert_close(alt.eval()(x), ref.eval()(x), **TIGHT)


def test_fused_autonorm_override_endpoints_and_constant() -> None:
    ref = _randomise(AutoNorm(C, gate="soft"))
    for value in (0.0, 1.0, 0.25):
        ref.gate_override = value
        alt = with_impl(ref, "fused")
        _compare(ref, alt, torch.randn(B, N, C))


def test_fused_low_precision_follows_eager_dtype() -> None:
    x = torch.randn(B, N, C).to(torch.bfloat16)
    for m in (DyT(C), AutoNorm(C, gate="soft")):
        alt = with_impl(m, "fused")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ref, y_alt = m(x), alt(x)
        assert y_alt.dtype == y_ref.dtype
        torch.testing.assert_close(y_alt, y_ref, atol=2e-2, rtol=2e-2)


def test_gradcheck_custom_functions_float64() -> None:
    dt = torch.float64
    x = torch.randn(3, 4, 5, dtype=dt, requires_grad=True)
    alpha = torch.tensor([0.7], dtype=dt, requires_grad=True)
    w = torch.randn(5, dtype=dt, requires_grad=True)
    b = torch.randn(5, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(fused.DyTFunction.apply, (x, alpha, w, b))
    a = torch.rand(3, dtype=dt, requires_grad=True)
    lw = torch.randn(5, dtype=dt, requires_grad=True)
    lb = torch.randn(5, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: fused.BlendFunction.apply(*t, 1e-6), (x, a, lw, lb, alpha, w, b)
    )
    # the Functions equal the reference formulas in float64 to ~1e-15
    torch.testing.assert_close(fused.DyTFunction.apply(x, alpha, w, b), dynamic_tanh(x, alpha, w, b))
    torch.testing.assert_close(
        fused.BlendFunction.apply(x, a, lw, lb, alpha, w, b, 1e-6),
        blend(x, a, lw, lb, 1e-6, alpha, w, b),
    )


def test_custom_functions_partial_requires_grad() -> None:
    """Every subset of inputs requiring grad gives the reference gradients (float64)."""
    dt = torch.float64
    base = [torch.randn(3, 4, 5, dtype=dt), torch.rand(3, dtype=dt), torch.randn(5, dtype=dt), torch.randn(5, dtype=dt),
            torch.tensor([0.7], dtype=dt), torch.randn(5, dtype=dt), torch.randn(5, dtype=dt)]  # fmt: skip

    def blend_ref(x, a, lw, lb, al, w, b):
        return blend(x, a, lw, lb, 1e-6, al, w, b)

    assert_every_requires_grad_subset_matches(lambda *t: fused.BlendFunction.apply(*t, 1e-6), blend_ref, base)
    dyt_inputs = [base[0], base[4], base[5], base[6]]
    assert_every_requires_grad_subset_matches(fused.DyTFunction.apply, dynamic_tanh, dyt_inputs)


@pytest.fixture
def compile_backend(request):
    """Sets the ``impl="compiled"`` backend for one test, then restores the previous one."""
    before = fused.compile_backend()
    fused.set_compile_backend(request.param)
    yield request.param
    fused.set_compile_backend(before)


def _check_compiled(name: str) -> None:
    ref = _randomise(dict(_norm_cases())[name]).train()
    alt = with_impl(ref, "compiled")
    x = torch.randn(B, N, C)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback: it really compiled
        _compare(ref, alt, x)
    assert not fused.compile_failures()
    # module state is unaffected: state_dict, pickle and deepcopy work after a compiled call
    assert set(alt.state_dict()) == set(ref.state_dict())
    buf = io.BytesIO()
    torch.save(alt, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    again = pickle.loads(pickle.dumps(copy.deepcopy(alt)))
    ref.eval(), loaded.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), **TIGHT)
        torch.testing.assert_close(again(x), ref(x), **TIGHT)


@pytest.mark.parametrize("compile_backend", ["aot_eager"], indirect=True)
@pytest.mark.parametrize("name", ["dyt", "soft", "gumbel", "afn"])
def test_compiled_matches_eager_and_pickles(name: str, compile_backend) -> None:
    """Graph capture + AOTAutograd (fast backend): numerics, gradients, pickling."""
    _check_compiled(name)


@pytest.mark.parametrize("compile_backend", ["inductor"], indirect=True)
def test_compiled_with_inductor(compile_backend) -> None:
    """The default backend really compiles (C++ codegen on CPU; ~15 s on a cold cache)."""
    _check_compiled("dyt")


def test_compiled_failure_falls_back_to_eager_with_warning(monkeypatch) -> None:
    fused.set_compile_backend("inductor")

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    try:
        m = DyT(C, impl="compiled")
        x = torch.randn(B, N, C)
        with pytest.warns(RuntimeWarning, match="falling back to the eager"):
            y = m(x)
        torch.testing.assert_close(y, dynamic_tanh(x, m.alpha, m.weight, m.bias), atol=0, rtol=0)
        assert "dynamic_tanh" in fused.compile_failures()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m(x)  # no second warning
    finally:
        fused.set_compile_backend("inductor")


def test_impl_argument_validation_and_registry() -> None:
    for name in ("dyt", "autonorm", "afn"):
        for impl in IMPLS:
            m = NORMS[name](C, impl=impl)
            assert m.impl == impl
        with pytest.raises(ValueError, match="impl must be one of"):
            NORMS[name](C, impl="cuda")
    assert AutoNorm(C, impl="fused").dyt.impl == "fused"
    assert "impl='fused'" in repr(DyT(C, impl="fused"))
    assert "impl" not in repr(DyT(C, impl="eager"))
