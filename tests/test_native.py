"""The C++ kernels behind ``impl="fused"`` on CPU (autonorm.kernels.native): they build, they
compute what the eager reference and the torch-op path compute (forward and every gradient, at
the shapes and thread counts training uses), and a failed build falls back cleanly."""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autonorm.kernels import native, select
from autonorm.norms import AFN, DEFAULT_IMPL, AutoNorm, DyT, GumbelGate
from autonorm.norms.autonorm import blend
from autonorm.norms.dyt import dynamic_tanh
from autonorm.norms.gates import logistic_noise, straight_through_binary
from grad_helpers import assert_every_requires_grad_subset_matches, with_impl

pytestmark = pytest.mark.skipif(not native.enabled(), reason="AUTONORM_NATIVE=0: the C++ kernels are turned off")

TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def lib():
    st = native.status()
    assert st["available"], f"the C++ kernels did not build: {st['error']}"
    return native.ops()


def _randomise(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 1 and n.endswith(("weight", "bias")):
                p.add_(torch.randn_like(p) * 0.3)
        for g in [mm for mm in m.modules() if hasattr(mm, "net")]:
            last = g.net if isinstance(g.net, nn.Linear) else g.net[-1]
            last.weight.normal_(std=0.5)  # per-sample gates that differ across samples
    return m


def _run(m: nn.Module, x: torch.Tensor, kernels: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    xx = x.clone().requires_grad_(True)
    torch.manual_seed(3)  # the same Gumbel noise for every implementation
    ctx = native.turned_off() if not kernels else _null()
    with ctx:
        y = m(xx)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y * g).sum().backward()
    grads = {"x": xx.grad, **{n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}}
    m.zero_grad(set_to_none=True)
    return y.detach(), grads


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def _cases(c: int) -> dict[str, nn.Module]:
    return {
        "dyt": DyT(c, alpha_init=0.7),
        "soft": AutoNorm(c, gate="soft"),
        "soft_mlp": AutoNorm(c, gate="soft", gate_hidden=4),
        "soft_mean": AutoNorm(c, gate="soft", gate_features="mean"),
        "gumbel": AutoNorm(c, gate="gumbel"),
        "freeze_dyt": AutoNorm(c, gate="soft", freeze_branch="dyt"),
        "afn": AFN(c),
        "afn_noenc": AFN(c, use_encoders=False),
    }


SHAPES = [(6, 5, 16), (3, 1, 7), (1, 4, 9), (40, 65, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(_cases(4)))
def test_kernels_match_eager_and_torch_ops(lib, name: str, shape: tuple[int, int, int]) -> None:
    b, n, c = shape
    ref = _randomise(_cases(c)[name]).train()
    fused_m = with_impl(ref, "fused")
    x = torch.randn(b, n, c) * 1.5 + 0.3
    y0, g0 = _run(copy.deepcopy(ref), x, kernels=False)  # eager reference
    y1, g1 = _run(copy.deepcopy(fused_m), x, kernels=False)  # torch-op fused path
    y2, g2 = _run(copy.deepcopy(fused_m), x, kernels=True)  # C++ kernels
    for y, g, label in ((y1, g1, "torch-op"), (y2, g2, "kernels")):
        torch.testing.assert_close(y, y0, **TOL, msg=lambda m, label=label: f"{label} forward: {m}")
        assert g.keys() == g0.keys(), label
        for k in g0:
            # reductions over up to 2,600 rows: float32 rounding scales with the gradient's size
            atol = TOL["atol"] * max(1.0, g0[k].abs().max().item())
            torch.testing.assert_close(g[k], g0[k], atol=atol, rtol=TOL["rtol"], msg=lambda m, k=k, label=label: f"{label} grad {k}: {m}")
    # eval mode / no grad (the inference entry points)
    with torch.no_grad():
        e0 = copy.deepcopy(ref).eval()(x)
        e2 = copy.deepcopy(fused_m).eval()(x)
    torch.testing.assert_close(e2, e0, **TOL)


def test_the_kernels_are_what_fused_runs(lib, monkeypatch) -> None:
    """``impl="fused"`` on float32 CPU goes through the kernels (a failing stub proves it), and
    float64 / ``turned_off`` take the torch-op path."""
    calls: list[str] = []
    monkeypatch.setattr(native, "ops", lambda: _Spy(lib, calls))
    x = torch.randn(4, 5, 8)
    with torch.no_grad():
        DyT(8, impl="fused")(x)
        AutoNorm(8, impl="fused")(x)
        AutoNorm(8, impl="fused", gate_features="mean")(x)
        AFN(8, impl="fused").train()(x)
    assert {"dyt_forward", "blend_forward", "token_moments", "token_mean", "channel_moments"} <= set(calls)
    calls.clear()
    with torch.no_grad():
        DyT(8, impl="fused").double()(x.double())
        with native.turned_off():
            AutoNorm(8, impl="fused")(x)
    assert calls == []


class _Spy:
    def __init__(self, lib, calls: list[str]) -> None:
        self._lib, self._calls = lib, calls

    def __getattr__(self, name: str):
        self._calls.append(name)
        return getattr(self._lib, name)


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_thread_count_changes_only_rounding(lib, threads: int) -> None:
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        m = _randomise(AutoNorm(64, gate="soft", impl="fused")).train()
        x = torch.randn(64, 65, 64)
        y, g = _run(m, x, kernels=True)
        torch.set_num_threads(1)
        y1, g1 = _run(m, x, kernels=True)
    finally:
        torch.set_num_threads(prev)
    torch.testing.assert_close(y, y1, atol=0, rtol=0)  # the forward is per-row: bit-identical
    for k in g:
        torch.testing.assert_close(g[k], g1[k], atol=TOL["atol"] * max(1.0, g1[k].abs().max().item()), rtol=TOL["rtol"])


def test_partial_requires_grad_native_functions(lib) -> None:
    """Every subset of inputs requiring grad gives the eager gradients (what frozen branches and
    constant gates rely on)."""
    base = [torch.randn(3, 4, 5), torch.rand(3), torch.randn(5), torch.randn(5), torch.tensor([0.7]), torch.randn(5), torch.randn(5)]

    def blend_kernel(x, a, lw, lb, al, w, b):
        return native.NativeBlendFunction.apply(x, a, lw, lb, al, w, b, 1e-6)

    def blend_ref(x, a, lw, lb, al, w, b):
        return blend(x, a, lw, lb, 1e-6, al, w, b)

    assert_every_requires_grad_subset_matches(blend_kernel, blend_ref, base, **TOL)
    dyt_inputs = [base[0], base[4], base[5], base[6]]
    assert_every_requires_grad_subset_matches(native.NativeDyTFunction.apply, dynamic_tanh, dyt_inputs, **TOL)


def test_dyt_kernel_extreme_inputs(lib) -> None:
    """The kernel's exp keeps tanh's limits and propagates NaN; saturated inputs give zero input
    gradient, as tanh does."""
    x = torch.tensor([[0.0, 1e-8, -1e-8, 0.5, -3.0, 30.0, -30.0, 1e4, -1e4, float("inf"), float("-inf"), 87.0, -90.0]])
    alpha, w, b = torch.tensor([1.0]), torch.ones(x.shape[1]), torch.zeros(x.shape[1])
    y = lib.dyt_forward(x, alpha, w, b)
    torch.testing.assert_close(y, torch.tanh(x), atol=3e-7, rtol=0)
    nan = lib.dyt_forward(torch.tensor([[float("nan"), 1.0]]), alpha, torch.ones(2), torch.zeros(2))
    assert math.isnan(nan[0, 0].item()) and not math.isnan(nan[0, 1].item())
    dx, _, _, _ = lib.dyt_backward(torch.ones_like(x), x, alpha, w)
    ref = 1 - torch.tanh(x) ** 2
    torch.testing.assert_close(dx[:, :9], ref[:, :9], atol=1e-6, rtol=0)
    assert torch.isfinite(dx).all()


def test_channel_moments_accurate_with_large_mean(lib) -> None:
    """AFN's statistics: a large common offset does not swamp the variance (shifted sums with
    double accumulators), unlike a naive float32 E[x^2] - E[x]^2."""
    x = torch.randn(4096, 8) * 0.01 + 1000.0
    mean, var = lib.channel_moments(x)
    v64, m64 = torch.var_mean(x.double(), dim=0, unbiased=False)
    torch.testing.assert_close(mean.double(), m64, atol=1e-4, rtol=0)
    torch.testing.assert_close(var.double(), v64, atol=0, rtol=1e-3)


def test_build_failure_falls_back_with_one_warning(monkeypatch) -> None:
    saved = dict(native._state)
    try:
        native._reset_for_tests()

        def broken() -> None:
            raise RuntimeError("g++: command not found")

        monkeypatch.setattr(native, "_build", broken)
        x = torch.randn(2, 3, 4)
        with pytest.warns(RuntimeWarning, match="could not be built.*g\\+\\+: command not found"):
            y = DyT(4, impl="fused")(x)
        torch.testing.assert_close(y, DyT(4)(x), **TOL)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            AutoNorm(4, impl="fused")(x)
        st = native.status()
        assert not st["available"] and "command not found" in st["error"]
    finally:
        native._state.update(saved)


def test_build_key_depends_on_cpu_and_source(monkeypatch) -> None:
    key = native.build_key()
    monkeypatch.setattr(native, "_cpu_signature", lambda: "x86_64|flags: sse2")
    assert native.build_key() != key  # a library built for another CPU is never loaded
    assert len(key) == 16 and native.kernel_dir().name


# ------------------------------------------------------------------------- Gumbel gate (2 classes)
def test_two_class_gumbel_equals_gumbel_softmax_given_the_same_noise() -> None:
    logits = torch.randn(256, 2, requires_grad=True)
    g = -torch.log(-torch.log(torch.rand(256, 2)))  # Gumbel(0, 1)
    tau = torch.tensor(0.7)
    soft = F.softmax((logits + g) / tau, dim=-1)[:, 0]
    d = logits[:, 0] - logits[:, 1]
    a = straight_through_binary(d, g[:, 0] - g[:, 1], tau)
    assert torch.equal(a.detach(), (soft.detach() >= 0.5).float())
    (ga,) = torch.autograd.grad(a.sum(), logits)
    (gs,) = torch.autograd.grad(soft.sum(), logits)
    torch.testing.assert_close(ga, gs, atol=1e-6, rtol=1e-5)


def test_gumbel_gate_choice_frequency_is_softmax_probability() -> None:
    gate = GumbelGate(4).train()
    with torch.no_grad():
        gate.net.weight.zero_()
        gate.net.bias.copy_(torch.tensor([0.8, -0.4]))  # p(LN) = sigmoid(1.2) = 0.769
    a = gate(torch.zeros(40000, 4))
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert abs(a.mean().item() - torch.sigmoid(torch.tensor(1.2)).item()) < 0.01
    noise = logistic_noise(torch.empty(40000))
    assert abs(noise.mean().item()) < 0.05 and abs(noise.var().item() - math.pi**2 / 3) < 0.1


def test_deployed_hard_gate_runs_one_kernel_and_matches_the_eval_model(lib, monkeypatch) -> None:
    from autonorm.kernels.deploy import DeployedDispatch

    m = _randomise(AutoNorm(16, gate="gumbel", impl="fused")).eval()
    d = DeployedDispatch(m)
    x = torch.randn(32, 5, 16) * 2
    with torch.inference_mode():
        ref = m(x)
        choices = d.decisions(x)
        assert 0 < int(choices.sum()) < 32  # both branches occur
        calls: list[str] = []
        monkeypatch.setattr(native, "ops", lambda: _Spy(lib, calls))
        out = d(x)
    assert "select_forward" in calls
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    with native.turned_off(), torch.inference_mode():
        torch.testing.assert_close(d(x), ref, **TOL)  # the index_select path agrees


def test_torch_compile_traces_the_torch_op_path(lib) -> None:
    """Under torch.compile (e.g. trainer.compile=true on CPU) impl=fused takes the traceable
    torch-op path; the compiled module computes the same function."""
    m = _randomise(AutoNorm(8, gate="soft", impl="fused")).train()
    x = torch.randn(4, 5, 8, requires_grad=True)
    compiled = torch.compile(m, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, m(x), **TOL)
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- impl="auto"
@pytest.fixture
def auto_cache(tmp_path, monkeypatch):
    """A fresh choice cache in ``tmp_path`` (the kernels stay loaded from their own folder), with
    short measurements."""
    native.ops()
    monkeypatch.setenv("AUTONORM_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(select, "MEASURE_S", 0.002)
    monkeypatch.setattr(select, "ROUNDS", 1)
    monkeypatch.setattr(select, "cpu_counters", lambda: None)  # the load is unknown: every entry final
    select.forget()
    yield select.cache_path()
    select.forget()


def _forced(monkeypatch, route: str) -> list[tuple[str, tuple[str, ...]]]:
    """Make every auto choice return ``route`` where it is a candidate; returns the calls."""
    seen: list[tuple[str, tuple[str, ...]]] = []

    def choose(op, x, train, names, make):
        seen.append((op, tuple(names)))
        return route if route in names else names[0]

    monkeypatch.setattr(select, "choose", choose)
    return seen


@pytest.mark.parametrize("route", ["kernel", "torch", "eager"])
@pytest.mark.parametrize("name", ["dyt", "soft", "gumbel", "afn"])
def test_every_route_auto_can_pick_equals_eager(lib, monkeypatch, name: str, route: str) -> None:
    """Whatever ``impl="auto"`` picks computes the eager function: forward, every gradient, and
    the no-grad entry points."""
    seen = _forced(monkeypatch, route)
    ref = _randomise(_cases(16)[name]).train()
    auto = with_impl(ref, "auto")
    x = torch.randn(5, 7, 16) * 1.5 + 0.3
    y0, g0 = _run(copy.deepcopy(ref), x, kernels=True)
    y1, g1 = _run(copy.deepcopy(auto), x, kernels=True)
    torch.testing.assert_close(y1, y0, **TOL)
    assert g1.keys() == g0.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=TOL["atol"] * max(1.0, g0[k].abs().max().item()), rtol=TOL["rtol"])
    with torch.inference_mode():
        torch.testing.assert_close(copy.deepcopy(auto).eval()(x), copy.deepcopy(ref).eval()(x), **TOL)
    assert seen, "impl=auto made no choice"


@pytest.mark.parametrize("route", ["kernel", "torch"])
def test_deployed_auto_routes_equal_the_eval_model(lib, monkeypatch, route: str) -> None:
    from autonorm.norms.deploy import deploy_model

    seen = _forced(monkeypatch, route)
    model = nn.Sequential(
        _randomise(AutoNorm(16, gate="gumbel", impl="auto")), _randomise(AutoNorm(16, gate="soft", impl="auto")),
        _randomise(DyT(16, impl="auto")), AFN(16, impl="auto", eval_stats="running"),  # batch statistics stay undeployed
    ).eval()  # fmt: skip
    x = torch.randn(32, 5, 16) * 2
    with torch.inference_mode():
        ref = model(x)
        out = deploy_model(model)(x)
    torch.testing.assert_close(out, ref, **TOL)
    assert {"select", "blend", "dyt", "affine", "token_moments"} <= {op for op, _ in seen}


def test_auto_measures_once_and_reuses_the_cache_file(lib, auto_cache, monkeypatch) -> None:
    m = _randomise(AutoNorm(16, gate="soft", impl="auto")).train()
    x = torch.randn(6, 9, 16, requires_grad=True)
    eager = with_impl(m, "eager")
    y = m(x)
    torch.testing.assert_close(y, eager(x), **TOL)
    stored = json.loads(auto_cache.read_text())["choices"]
    keys = [k for k in stored if k.startswith("blend|cpu|float32|train|")]
    assert keys and stored[keys[0]]["impl"] in stored[keys[0]]["us"]
    assert set(stored[keys[0]]["us"]) == {"kernel", "torch", "eager"}

    # a new process (simulated: memory forgotten) reads the file instead of measuring
    select.forget()
    monkeypatch.setattr(select, "_measure", lambda *a: pytest.fail("measured a cached key again"))
    m(x)
    assert select.choices()[keys[0]]["impl"] == stored[keys[0]]["impl"]


@pytest.mark.parametrize("garbage", [b"{not json", b'{"schema": 1, "choices": []}', b"\xff\xfe", b'{"schema": 99}'])
def test_auto_recovers_from_a_corrupt_cache_file(lib, auto_cache, garbage: bytes) -> None:
    auto_cache.parent.mkdir(parents=True, exist_ok=True)
    auto_cache.write_bytes(garbage)
    x = torch.randn(4, 5, 16)
    with pytest.warns(RuntimeWarning, match="impl=auto"):
        with torch.no_grad():
            y = DyT(16, impl="auto")(x)
    torch.testing.assert_close(y, DyT(16)(x), **TOL)
    data = json.loads(auto_cache.read_text())  # rewritten, valid
    assert data["schema"] == select.SCHEMA and any(k.startswith("dyt|") for k in data["choices"])


def test_auto_cache_writes_are_atomic_and_merge(auto_cache) -> None:
    """Writers in parallel never leave a torn file; entries of other writers are kept."""
    import threading

    def writer(i: int) -> None:
        for j in range(20):
            select._write(auto_cache, {f"k{i}-{j}": {"impl": "torch", "us": {}}})
            json.loads(auto_cache.read_text())  # always a whole file

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = json.loads(auto_cache.read_text())["choices"]
    assert {f"k{i}-19" for i in range(4)} <= set(entries)  # the last write of each writer survives
    assert not list(auto_cache.parent.glob("*.tmp"))


def test_auto_training_in_fit_equals_eager_training(lib, auto_cache, tmp_path) -> None:
    """Timing inside the first training steps (inside autograd) leaves training unchanged: a
    Lightning fit with impl=auto ends with the parameters of the same fit with impl=eager."""
    import pytorch_lightning as pl

    from autonorm.data import BatchLoader
    from autonorm.tasks import ClassificationTask

    model_cfg = {"_target_": "autonorm.models.VisionTransformer", "img_size": 16, "patch_size": 4, "in_chans": 3,
                 "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "drop_rate": 0.0}  # fmt: skip
    optim = {"lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "min_lr_ratio": 1.0}
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (48,), generator=g)
    finals = {}
    for norm in ({"_target_": "autonorm.norms.AutoNorm", "gate": "soft", "impl": "{impl}"},
                 {"_target_": "autonorm.norms.AFN", "impl": "{impl}"}):  # fmt: skip
        for impl in ("eager", "auto"):
            torch.manual_seed(0)
            task = ClassificationTask(model_cfg, {**norm, "impl": impl}, 10, optim)
            loader = BatchLoader(imgs, labels, 16, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, drop_last=True, seed=0)
            trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
            trainer.fit(task, train_dataloaders=loader)
            finals[impl] = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
        for k, v in finals["eager"].items():
            torch.testing.assert_close(finals["auto"][k], v, atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"{norm['_target_']} {k}: {m}")
    ops = {k.split("|")[0] for k in select.choices()}
    assert {"blend", "token_moments", "afn_stats"} <= ops  # it did measure, inside the fit


def test_auto_under_torch_compile_traces_the_eager_formula(monkeypatch) -> None:
    monkeypatch.setattr(select, "choose", lambda *a: pytest.fail("measured while tracing"))
    m = _randomise(AutoNorm(8, gate="soft", impl="auto")).train()
    x = torch.randn(4, 5, 8, requires_grad=True)
    y = torch.compile(m, backend="aot_eager")(x)
    y.sum().backward()
    torch.testing.assert_close(y, with_impl(m, "eager")(x), **TOL)


def test_default_impl_is_auto_in_the_norm_configs() -> None:
    from omegaconf import OmegaConf

    from conftest import CONF

    for name in ("dyt", "autonorm", "afn"):
        assert OmegaConf.load(CONF / "norm" / f"{name}.yaml").impl == DEFAULT_IMPL == "auto"


# -------------------------------------------------------------------------------- bfloat16
@pytest.mark.parametrize("impl", ["fused", "auto"])
@pytest.mark.parametrize("name", ["dyt", "soft", "gumbel", "afn"])
def test_bf16_input_on_the_fast_paths_matches_float32_eager(lib, auto_cache, name: str, impl: str) -> None:
    """A bfloat16 model on bfloat16 input: the fast paths compute in float32 and return
    bfloat16, within bfloat16 rounding of the float32 eager model (forward and input gradient)."""
    ref = _randomise(_cases(16)[name]).train()
    x = torch.randn(6, 7, 16) * 1.5 + 0.3
    y0, g0 = _run(copy.deepcopy(ref), x, kernels=True)  # float32 eager
    low = with_impl(ref, impl).bfloat16()
    y1, g1 = _run(low, x.bfloat16(), kernels=True)
    assert y1.dtype == torch.bfloat16 and g1["x"].dtype == torch.bfloat16
    torch.testing.assert_close(y1.float(), y0, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(g1["x"].float(), g0["x"], atol=5e-2 * max(1.0, g0["x"].abs().max().item()), rtol=5e-2)


def test_bf16_input_reaches_the_kernels(lib, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(native, "ops", lambda: _Spy(lib, calls))
    x = torch.randn(4, 5, 8).bfloat16()
    with torch.no_grad():
        y = DyT(8, impl="fused").bfloat16()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = AutoNorm(8, impl="fused")(x)
    assert {"dyt_forward", "blend_forward"} <= set(calls)
    assert y.dtype == torch.bfloat16 and z.dtype == torch.float32  # the eager formula's dtypes


# ----------------------------------------------------------------------------- the build
def test_build_is_keyed_by_content_not_path(lib, tmp_path, monkeypatch) -> None:
    """A second checkout (the same source elsewhere) has the same key and loads the existing
    library without building; the build compiles a copy inside the build folder."""
    key = native.build_key()
    other = tmp_path / "checkout" / "norm_kernels.cpp"
    other.parent.mkdir()
    other.write_bytes(native.SOURCE.read_bytes())
    monkeypatch.setattr(native, "SOURCE", other)
    assert native.build_key() == key
    build_dir = Path(native.status()["path"]).parent
    assert (build_dir / native.SOURCE.name).read_bytes() == other.read_bytes()
    ninja = build_dir / "build.ninja"
    if ninja.exists():
        assert str(build_dir / "norm_kernels.cpp") in ninja.read_text()

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda **kw: pytest.fail("rebuilt an existing library"))
    monkeypatch.setenv("AUTONORM_KERNEL_DIR", str(build_dir.parent))
    assert native._build() is not None


def test_auto_adopts_the_choice_another_process_wrote_first(auto_cache, monkeypatch) -> None:
    """Two processes measuring one key side by side end up on the same path: the entry written
    first wins (so runs started together take the same paths and give the same bits)."""
    x = torch.randn(4, 5, 16)

    def measure_while_another_process_writes(names, make):
        select._write(auto_cache, {select.choice_key("dyt", x, False, names): {"impl": "torch", "us": {}}})
        return "kernel", {"kernel": 1.0, "torch": 2.0}, 0.0

    monkeypatch.setattr(select, "_measure", measure_while_another_process_writes)
    names = ("kernel", "torch", "eager")
    assert select.choose("dyt", x, False, names, lambda n: (lambda: None)) == "torch"
    assert json.loads(auto_cache.read_text())["choices"][select.choice_key("dyt", x, False, names)]["impl"] == "torch"


def _stored(path, key: str) -> dict:
    return json.loads(path.read_text())["choices"][key]


def _cached_then_measured(cache, monkeypatch, stored_others, measured_others: float):
    """A DyT choice ``torch`` already in the cache file (its load ``stored_others``, or no record
    with ``"missing"``); measuring it again would pick ``kernel`` under ``measured_others`` cores
    of other load. Returns (x, names, key, the stored entry, the list of measurements made)."""
    x = torch.randn(4, 5, 16)
    names = ("kernel", "torch", "eager")
    key = select.choice_key("dyt", x, False, names)
    old = {"impl": "torch", "us": {"kernel": 9.0, "torch": 5.0}, **({} if stored_others == "missing" else {"others": stored_others})}
    select._write(cache, {key: old})
    calls: list[int] = []

    def measure(names_, make):
        calls.append(1)
        return "kernel", {"kernel": 1.0, "torch": 2.0}, measured_others

    monkeypatch.setattr(select, "_measure", measure)
    return x, names, key, old, calls


@pytest.mark.parametrize("stored_others", [1.5, "missing"])
def test_auto_measures_a_busy_or_unrecorded_choice_again_and_a_quiet_one_replaces_it(auto_cache, monkeypatch, stored_others) -> None:
    """A choice cached while other processes kept the CPU busy (or by a version that kept no
    record of the load) is measured again once; a measurement on a quiet machine replaces it."""
    x, names, key, old, calls = _cached_then_measured(auto_cache, monkeypatch, stored_others, measured_others=0.0)
    assert select.choose("dyt", x, False, names, lambda n: (lambda: None)) == "kernel"
    assert _stored(auto_cache, key) == {"impl": "kernel", "us": {"kernel": 1.0, "torch": 2.0}, "others": 0.0}
    select.forget()  # a new process: the entry is final now
    assert select.choose("dyt", x, False, names, lambda n: (lambda: None)) == "kernel"
    assert calls == [1]


def test_auto_keeps_a_busy_choice_when_measuring_again_is_busy_too(auto_cache, monkeypatch) -> None:
    """Measured again on a machine still busy, the stored entry stays (processes side by side keep
    one path), and this process does not measure the key a third time."""
    x, names, key, old, calls = _cached_then_measured(auto_cache, monkeypatch, 1.0, measured_others=0.9)
    for _ in range(2):
        assert select.choose("dyt", torch.randn(4, 5, 16), False, names, lambda n: (lambda: None)) == "torch"
    select._fast.clear()  # past the per-shape memo: the key itself is not measured again either
    assert select.choose("dyt", x, False, names, lambda n: (lambda: None)) == "torch"
    assert calls == [1] and _stored(auto_cache, key) == old


def test_auto_records_the_load_its_measurement_ran_under(lib, auto_cache, monkeypatch) -> None:
    """A real measurement stores the other processes' CPU use read around its timing."""
    readings = iter([(100.0, 10.0, 0.0), (100.5, 10.1, 1.0)])  # others used 0.4 cores over 1 s
    monkeypatch.setattr(select, "cpu_counters", lambda: next(readings))
    with torch.no_grad():
        DyT(16, impl="auto")(torch.randn(4, 5, 16))
    (entry,) = [v for k, v in json.loads(auto_cache.read_text())["choices"].items() if k.startswith("dyt|")]
    assert entry["others"] == pytest.approx(0.4) and select.provisional(entry)


def test_a_resumed_fit_goes_on_with_the_auto_paths_it_started_with(lib, auto_cache, tmp_path) -> None:
    """The choices a run used travel in its checkpoint; resumed after the cache file changed
    (here: every used entry flipped to another route), the run takes its original paths."""
    import pytorch_lightning as pl

    from autonorm.callbacks import AutoPathsCallback
    from autonorm.data import BatchLoader
    from autonorm.tasks import ClassificationTask

    model_cfg = {"_target_": "autonorm.models.VisionTransformer", "img_size": 16, "patch_size": 4, "in_chans": 3,
                 "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "drop_rate": 0.0}  # fmt: skip
    optim = {"lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "min_lr_ratio": 1.0}
    g = torch.Generator().manual_seed(0)
    imgs, labels = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 10, (32,), generator=g)

    def fit(epochs: int, ckpt_path=None) -> None:
        torch.manual_seed(0)
        task = ClassificationTask(model_cfg, {"_target_": "autonorm.norms.AutoNorm", "gate": "soft", "impl": "auto"}, 10, optim)
        loader = BatchLoader(imgs, labels, 16, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, drop_last=True, seed=0)
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, monitor=None)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, callbacks=[AutoPathsCallback(), ckpt],
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(task, train_dataloaders=loader, ckpt_path=ckpt_path)

    fit(1)
    used = select.used_choices()
    assert {k.split("|")[0] for k in used} >= {"blend", "token_moments"}
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]["AutoPathsCallback"]["choices"]
    assert saved == used
    other = {k: next(r for r in k.split("|")[-1].split("+") if r != v["impl"]) for k, v in used.items()}  # another candidate
    flipped = {k: {**v, "impl": other[k], "others": 0.0} for k, v in used.items()}
    select._write(auto_cache, flipped)  # the file changed while the run was stopped
    select.forget()  # a new process
    fit(2, ckpt_path=str(tmp_path / "last.ckpt"))
    assert {k: v["impl"] for k, v in select.used_choices().items() if k in used} == {k: v["impl"] for k, v in used.items()}
    select.forget()  # without the checkpoint's choices, a new process takes the file's
    fit(1)
    assert {k: select.choices()[k]["impl"] for k in used} == {k: v["impl"] for k, v in flipped.items()}
