"""The benchmark's measurement functions on a tiny config: JSON shape and RATIO line format only.

Never asserts on absolute times or on meeting targets (CPU timings depend on the machine's load).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RATIO_RE = re.compile(r"^RATIO (\S+) (\d+\.\d{3}) \(target (<=|>=) (\d+\.\d{2})\)$")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("autonorm_bench_script", REPO / "scripts" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _tiny_config(bench):
    model_cfg = {
        "name": "tiny_test",
        "_target_": "autonorm.models.VisionTransformer",
        "img_size": 32,
        "patch_size": 8,
        "in_chans": 3,
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "drop_rate": 0.0,
    }
    spec = bench.ModelSpec("tiny_test", model_cfg, train_batch=8, rounds=2, steps_per_round=1, warmup=1)
    return bench.BenchConfig(
        models=[spec], mode="test", infer_batch=8, infer_rounds=2, infer_iters_per_round=1, infer_warmup=1,
        lightning_model=spec, lightning_steps=5, lightning_skip=1, lightning_rounds=2,
        data_model=spec, data_batches_per_pass=3, data_rounds=2, data_train_steps_per_round=1,
        matmul_n=64, idle_sample_s=0.1,
    )  # fmt: skip


def test_tiny_benchmark_json_and_ratio_lines(bench, tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    result = bench.run_benchmark(_tiny_config(bench), out=out, log=lambda msg: None)
    data = json.loads(out.read_text())

    expected = {f"train_step/tiny_test/{v}" for v in ("dyt", "autonorm_soft", "autonorm_gumbel", "afn")}
    prefix = "inference_deployed" if data["deploy_available"] else "inference"
    expected |= {f"{prefix}/tiny_test/{v}" for v in ("dyt", "autonorm_soft", "autonorm_gumbel")}
    expected |= {"lightning_overhead", "data_path"}
    expected |= {f"auto_vs_best/train_step/tiny_test/{v}" for v in ("dyt", "autonorm_soft", "autonorm_gumbel", "afn")}
    expected |= {f"throughput_vs_matmul/tiny_test/{v}" for v in ("ln", "dyt", "autonorm_soft", "autonorm_gumbel", "afn")}
    assert expected <= set(data["ratios"])
    for name, r in data["ratios"].items():
        assert r["name"] == name
        assert r["value"] > 0 and r["target"] > 0
        assert r["op"] in ("<=", ">=")
        assert isinstance(r["pass"], bool)
    assert data["ratios"]["data_path"]["op"] == ">="
    assert data["ratios"]["lightning_overhead"]["target"] == pytest.approx(1.03)

    for key in ("machine", "torch", "threads", "date", "machine_busy", "loadavg", "raw", "flops_source", "native_kernels",
                "flop_convention", "auto_choices", "precision", "device"):  # fmt: skip
        assert key in data
    # the machine is recorded: CPU model and flags, matmul rates in both precisions
    assert data["machine"]["cpu_flags"] and isinstance(data["machine"]["cpu_isa"], list)
    assert set(data["machine"]["matmul_gflops"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in data["machine"]["matmul_gflops"].values())
    assert "2 FLOPs per multiply-add" in data["flop_convention"]
    # impl=auto (the configs' default) chose a path for every norm op it met, recorded in the JSON
    ops = {k.split("|")[0] for k in data["auto_choices"]}
    assert {"dyt", "blend"} <= ops, data["auto_choices"]
    from autonorm.kernels import native

    if native.enabled():  # the figures are those of the C++ kernels, not of the fallback
        assert data["native_kernels"]["available"] is True, data["native_kernels"]
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"]
    assert isinstance(data["machine_busy"], bool)
    assert data["raw"]["train"]["tiny_test"]["matmul_gflops"] > 0
    assert all(t > 0 for t in data["raw"]["train"]["tiny_test"]["median_step_s"].values())
    assert data["raw"]["lightning"]["median_step_s"]["plain"] > 0

    capsys.readouterr()
    bench.print_report(result)
    printed = capsys.readouterr().out
    assert "C++ kernels: " in printed and "impl=auto chose: " in printed
    assert re.search(r"^matmul on cpu .*float32 \d+ GFLOP/s, bfloat16 \d+ GFLOP/s$", printed, re.M), printed
    lines = [ln for ln in printed.splitlines() if ln.startswith("RATIO")]
    assert len(lines) == len(data["ratios"])
    for ln in lines:
        assert RATIO_RE.match(ln), ln


def test_format_ratio_line(bench):
    r = bench.make_ratio("train_step/vit_micro/dyt", 0.98765, 1.0)
    assert bench.format_ratio_line(r) == "RATIO train_step/vit_micro/dyt 0.988 (target <= 1.00)"
    assert r["pass"] is True
    r = bench.make_ratio("data_path", 7.5, 10, op=">=")
    assert bench.format_ratio_line(r) == "RATIO data_path 7.500 (target >= 10.00)"
    assert r["pass"] is False
    with pytest.raises(ValueError):
        bench.make_ratio("x", 1.0, 1.0, op="<")


def test_round_robin_and_idle_check(bench):
    calls = []
    times = bench.round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2, reps={"a": 2, "b": 1}, warmup=1)
    assert calls == ["a", "b", "a", "a", "b", "b", "a", "a"]  # warm-up, then the opening unit rotates
    assert [len(r) for r in times["a"]] == [2, 2] and [len(r) for r in times["b"]] == [1, 1]
    idle = bench.check_idle(0.05)
    assert set(idle) >= {"other_cpu_cores", "loadavg", "busy", "cores"}
    assert isinstance(idle["busy"], bool)


def test_bf16_speedup_times_both_precisions_of_each_norm_interleaved(bench, tmp_path):
    cfg = _tiny_config(bench)
    cfg.train_variants = ("ln", "autonorm_soft")
    res = bench.measure_bf16_speedup(cfg.models[0], cfg)
    assert set(res["times"]) == {"ln@32-true", "ln@bf16-mixed", "autonorm_soft@32-true", "autonorm_soft@bf16-mixed"}
    assert all(len(r) == cfg.models[0].rounds for r in res["times"].values())
    assert set(res["speedup"]) == {"bf16-mixed"}
    assert set(res["speedup"]["bf16-mixed"]) == {"ln", "autonorm_soft"} and all(s > 0 for s in res["speedup"]["bf16-mixed"].values())
    out = tmp_path / "bf16.json"
    assert bench.bf16_speedup_report(cfg, out) == 0
    assert set(json.loads(out.read_text())["bf16_speedup"][cfg.models[0].name]["speedup"]["bf16-mixed"]) == {"ln", "autonorm_soft"}


def test_bf16_mixed_training_step_and_matmul_reference(bench):
    """``--precision bf16-mixed``: the step runs under autocast and throughput is compared with a
    bfloat16 matmul."""
    cfg = _tiny_config(bench)
    cfg.precision = "bf16-mixed"
    cfg.train_variants = ("ln", "autonorm_soft")
    tr = bench.measure_training(cfg.models[0], cfg)
    assert tr["matmul_dtype"] == "bfloat16"
    assert tr["ratio_to_ln"]["autonorm_soft"] > 0 and tr["throughput_vs_matmul"]["autonorm_soft"] > 0
    model = bench.build(cfg.models[0], "autonorm_soft", 10)
    x, _ = bench._batch(4, 32, 10)
    with bench._autocast("cpu", "bf16-mixed"):
        assert model(x).dtype == torch.bfloat16


def test_flops_follow_two_per_multiply_add(bench):
    """Whatever convention count_flops reports, the benchmark's matrix FLOPs are 2 per
    multiply-add: a single linear layer of known size."""
    from torch import nn

    layer = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5, bias=False))
    assert bench.flops_per_sample(layer, img_size=4)["flops"] == 2 * 48 * 5


def test_auto_vs_best_divides_by_the_fastest_forced_path_of_each_round(bench):
    times = {
        "dyt@auto": [[1.0, 1.2], [2.0]],
        "dyt@kernels": [[0.5], [4.0]],  # fastest in round 0
        "dyt@torch": [[2.0], [1.0]],  # fastest in round 1
    }
    res = bench.auto_vs_best(times, "dyt", ["kernels", "torch"])
    assert res["fastest"] == {"kernels": 1, "torch": 1}
    assert res["ratio"] == pytest.approx((1.1 / 0.5 + 2.0 / 1.0) / 2)  # median of two rounds = their mean
    assert res["ratio_to_auto"]["kernels"] == pytest.approx((0.5 / 1.1 + 4.0 / 2.0) / 2)


def test_paths_figure_times_auto_and_every_forced_path_in_one_round_robin(bench, tmp_path, monkeypatch):
    from autonorm.kernels import native

    cfg = _tiny_config(bench)
    cfg.train_variants, cfg.infer_variants = ("ln", "dyt", "autonorm_gumbel"), ("ln", "dyt", "autonorm_gumbel")
    assert bench.paths_apply(cfg) and not bench.paths_apply(bench.replace(cfg, impl="fused"))
    # the torch-op path really runs with the C++ kernels turned off, the others with them on
    seen = []
    real = bench._on_path
    monkeypatch.setattr(bench, "_on_path", lambda p, fn: real(p, lambda: (seen.append((p, native.usable(torch.ones(2)) is None)), fn())))
    res = bench.measure_paths(cfg.models[0], cfg)
    paths = ["kernels", "torch", "eager"] if native.status()["available"] else ["torch", "eager"]
    assert res["paths"] == paths
    assert set(res["times"]["train_step"]) == {f"{v}@{p}" for v in ("dyt", "autonorm_gumbel") for p in ["auto", *paths]}
    assert set(res["train_step"]) == {"dyt", "autonorm_gumbel"} and set(res["inference_deployed"]) <= {"dyt", "autonorm_gumbel"}
    assert all(len(r) == cfg.models[0].rounds for r in res["times"]["train_step"].values())
    assert all(r["ratio"] > 0 and sum(r["fastest"].values()) == cfg.models[0].rounds for r in res["train_step"].values())
    assert {off for p, off in seen if p == "torch"} == {True}
    if native.status()["available"]:
        assert {off for p, off in seen if p == "kernels"} == {False}
    out = tmp_path / "paths.json"
    assert bench.paths_report(cfg, out) == 0
    data = json.loads(out.read_text())
    assert {f"auto_vs_best/train_step/tiny_test/{v}" for v in ("dyt", "autonorm_gumbel")} <= set(data["ratios"])
    assert all(r["target"] == pytest.approx(1.05) for r in data["ratios"].values()) and "cpu_model" in data["machine"]


def test_derf_is_measured_on_request_as_an_informational_figure(bench, tmp_path):
    cfg = _tiny_config(bench)
    cfg.train_variants, cfg.infer_variants = ("ln", "derf"), ("ln", "derf")
    data = bench.run_benchmark(cfg, out=tmp_path / "b.json", log=lambda msg: None)
    derf = {k: r for k, r in data["ratios"].items() if k.endswith("/derf")}
    assert "train_step/tiny_test/derf" in derf and any(k.startswith("inference") for k in derf)
    assert all(r["informational"] for k, r in derf.items() if not k.startswith("throughput"))
    assert "no target" in derf["train_step/tiny_test/derf"]["note"]
    assert not any(k.startswith("auto_vs_best") for k in data["ratios"])  # one path only: nothing to choose


def test_the_wait_policy_is_passive_unless_set_or_left_to_openmp(bench) -> None:
    assert bench.omp_wait_policy(["bench.py"], {}) == "passive"
    assert bench.omp_wait_policy(["bench.py", "--omp-default"], {}) is None
    assert bench.omp_wait_policy(["bench.py", "--omp-default"], {"OMP_WAIT_POLICY": "active"}) == "active"


def test_malloc_figure_pairs_alternating_processes_of_the_two_settings(bench, tmp_path, monkeypatch):
    """Each round runs one process per malloc setting, their order alternating; the figure is the
    median over rounds of default step / tuned step."""
    cfg = _tiny_config(bench)
    calls = []

    def fake_probe(setting, model, steps, variants):
        calls.append(setting)
        k = len(calls)
        step = {"default": 2.0, "tuned": 1.0}[setting] * (1 + 0.1 * k)  # drifting machine
        return {"setting": setting, "median_step_s": {"ln": step, "autonorm_soft": 1.5 * step},
                "minor_faults_per_step": 1000.0 if setting == "default" else 10.0}

    monkeypatch.setattr(bench, "run_malloc_probe", fake_probe)
    out = tmp_path / "malloc.json"
    assert bench.malloc_report(cfg, out, rounds=3) == 0
    assert calls == ["default", "tuned", "tuned", "default", "default", "tuned"]
    res = json.loads(out.read_text())
    speedups = res["malloc"][cfg.models[0].name]["speedup"]
    # rounds (default / tuned of the same round): 2.2 / 1.2, 2.8 / 1.3, 3.0 / 1.6: median 1.875
    assert speedups["ln"] == pytest.approx(3.0 / 1.6) and speedups["autonorm_soft"] == pytest.approx(speedups["ln"])
    assert "faults per step 1000 vs 10" in res["ratios"]["malloc_speedup/tiny_test/ln"]["note"]


def test_malloc_probe_reports_its_setting_steps_and_page_faults():
    """One process of the figure, for real: AUTONORM_MALLOC=default leaves malloc alone."""
    import subprocess

    proc = subprocess.run([sys.executable, "scripts/bench.py", "--malloc-probe", "default:vit_micro:1", "--variants", "dyt"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "AUTONORM_MALLOC": "default"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["malloc"]["tuned"] is False and set(res["median_step_s"]) == {"ln", "dyt"}
    assert all(t > 0 for t in res["median_step_s"].values()) and res["minor_faults_per_step"] >= 0 and res["max_rss_mb"] > 0
