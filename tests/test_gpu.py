"""The GPU path (run by ``scripts/gpu_check.sh`` with ``-m gpu``; skipped without CUDA): the
torch-op fused paths and ``impl=auto`` on CUDA compute what eager computes, and a few training
steps with ``trainer=gpu`` (bf16-mixed, torch.compile) run. Also here: the check script itself
refuses cleanly where there is no GPU (runs everywhere)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autonorm.kernels import fused, select
from autonorm.norms import AFN, AutoNorm, DyT
from grad_helpers import with_impl

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
TOL = dict(atol=2e-5, rtol=2e-5)


def _cases(c: int) -> dict[str, torch.nn.Module]:
    return {"dyt": DyT(c, alpha_init=0.7), "soft": AutoNorm(c, gate="soft"), "gumbel": AutoNorm(c, gate="gumbel"), "afn": AFN(c)}


def _run(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    xx = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    y = m(xx)
    (y.float() * torch.linspace(-1, 1, y.numel(), device=y.device).view(y.shape)).sum().backward()
    return y.detach(), {"x": xx.grad, **{n: p.grad for n, p in m.named_parameters() if p.grad is not None}}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("impl", ["fused", "auto"])
@pytest.mark.parametrize("name", ["dyt", "soft", "gumbel", "afn"])
def test_cuda_paths_match_eager(name: str, impl: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTONORM_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(select, "MEASURE_S", 0.002)
    fused.set_compile_backend("aot_eager")  # the compiled route without code generation (fast)
    select.forget()
    try:
        torch.manual_seed(0)
        ref = _cases(64)[name].cuda().train()
        alt = with_impl(ref, impl)
        x = torch.randn(8, 17, 64, device="cuda") * 1.5
        y0, g0 = _run(copy.deepcopy(ref), x)
        y1, g1 = _run(alt, x)
        torch.testing.assert_close(y1, y0, **TOL)
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], atol=1e-4 * max(1.0, g0[k].abs().max().item()), rtol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16 activations, float32 statistics
            y0, y1 = copy.deepcopy(ref).eval()(x.bfloat16()), alt.eval()(x.bfloat16())
        assert y1.dtype == y0.dtype
        torch.testing.assert_close(y1.float(), y0.float(), atol=3e-2, rtol=3e-2)
        if impl == "auto":
            assert all("|cuda:" in k for k in select.choices())
    finally:
        fused.set_compile_backend(os.environ.get("AUTONORM_COMPILE_BACKEND", "inductor"))
        select.forget()


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("norm", ["autonorm", "afn"])
def test_trainer_gpu_trains_a_few_steps(make_cfg, norm: str) -> None:
    from autonorm.cli import train

    cfg = make_cfg("trainer=gpu", "data=mnist_mini", "data.device=auto", f"norm={norm}", "eval.plots=false")
    train(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert 0.0 <= results["val_acc"] <= 1.0


def test_gpu_check_refuses_without_a_gpu_in_one_line() -> None:
    """With no GPU visible the script stops before running anything: exit status 3, one line."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PY": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: FAIL: torch sees no CUDA GPU"), proc.stderr
    # without an environment to run, the check for the GPU comes before `make install`
    env["PY"] = "/nonexistent/python"
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=60)
    if "nvidia-smi" in proc.stderr:
        assert proc.returncode == 3 and proc.stderr.startswith("gpu_check: FAIL: no NVIDIA GPU")
