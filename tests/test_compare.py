"""The results table and ``python -m autonorm.compare``: like-with-like rows, statistics, CIFAR-10-C, latency."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import yaml

from autonorm.eval.profile import interleaved_latency
from autonorm.pipeline import collect_runs, write_table
from autonorm.pipeline.collect import MixedDataError, group_runs
from autonorm.pipeline.render import render_markdown
from autonorm.pipeline.stats import compare_methods, family_pairs, holm, needed_difference, paired_t, planning, seeds_needed, summary
from autonorm.pipeline.table import build_report
from conftest import md_row

REPO = Path(__file__).resolve().parents[1]


def _config(method: str, seed: int, data: str = "cifar10_mini", lr: float = 0.005, **extra) -> dict:
    cfg = {
        "method": method, "seed": seed, "legend": f"{method} legend", "resume": "auto",
        "data": {"name": data, "root": "/somewhere", "batch_size": 128},
        "model": {"name": "vit_micro_conv", "embed_dim": 64},
        "norm": {"name": "ln"}, "optim": {"lr": lr, "weight_decay": 0.05},
        "trainer": {"max_epochs": 3}, "paths": {"output_dir": f"/out/{method}/{seed}/{lr}"},
        "logger": {"csv": {"save_dir": "x"}},
    }
    cfg.update(extra)
    return cfg


def fake_run(folder: Path, method: str, seed: int, test_acc: float | None, status: str = "completed",
             results_extra: dict | None = None, **cfg_kwargs) -> Path:
    folder.mkdir(parents=True)
    cfg = _config(method, seed, **cfg_kwargs)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    if status == "failed":
        (folder / "FAILED").write_text("Traceback (most recent call last):\n  x\nRuntimeError: loss is NaN | step 3\n")
        return folder
    res = {"method": method, "seed": seed, "data": cfg["data"]["name"], "model": cfg["model"]["name"],
           "test_acc": test_acc, "val_acc": test_acc, "params": 1000, "flops_per_sample": 5.2e6,
           "train_time_s": 10.0 + seed, "latency_ms_per_sample": 99.0, **(results_extra or {})}
    (folder / "results.json").write_text(json.dumps(res))
    (folder / "COMPLETED").write_text("{}")
    return folder


# ------------------------------------------------------------------------------ statistics


def test_paired_t_matches_the_textbook_sleep_example() -> None:
    # Student's sleep data (Cushny & Peebles): extra hours of sleep with two drugs, ten patients;
    # the paired t-test gives t = -4.0621, df = 9, p = 0.002833, 95% CI of the mean difference
    # (-2.4598858, -0.7001142), mean difference -1.58 (the standard worked example).
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    res = paired_t(drug1, drug2)
    assert res["n"] == 10 and res["mean_diff"] == pytest.approx(-1.58)
    assert res["t"] == pytest.approx(-4.0621, abs=1e-4)
    assert res["p"] == pytest.approx(0.002833, abs=1e-6)
    assert res["ci"] == pytest.approx((-2.4598858, -0.7001142), abs=1e-6)
    assert paired_t([0.5], [0.4])["p"] is None  # one pair: no test


def test_holm_adjustment_textbook() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9, None, 0.5]) == [pytest.approx(1.0), None, pytest.approx(1.0)]


def test_compare_methods_words_only_what_passes() -> None:
    clear = {"A": {0: 0.90, 1: 0.91, 2: 0.92, 3: 0.905}, "B": {0: 0.80, 1: 0.815, 2: 0.82, 3: 0.80}}
    noisy = {**clear, "C": {0: 0.95, 1: 0.70, 2: 0.90, 3: 0.60}, "D": {7: 0.5}}
    comps = {(c["a"], c["b"]): c for c in compare_methods(noisy)}
    assert comps[("A", "B")]["finding"] == "a > b" and comps[("A", "B")]["p_holm"] < 0.05
    assert comps[("A", "C")]["finding"] == "no significant difference"
    assert comps[("A", "D")]["finding"] == "not testable (0 paired seeds)"
    assert comps[("A", "B")]["p_holm"] == pytest.approx(3 * comps[("A", "B")]["p"]) or comps[("A", "B")]["p_holm"] >= comps[("A", "B")]["p"]
    # the difference needed to pass: Bonferroni's bound over the 3 testable pairs, by hand
    d = np.subtract([0.90, 0.91, 0.92, 0.905], [0.80, 0.815, 0.82, 0.80])
    assert comps[("A", "B")]["needed"] == pytest.approx(scipy.stats.t.ppf(1 - 0.05 / 6, 3) * d.std(ddof=1) / 2)
    assert comps[("A", "D")]["needed"] is None
    vs = compare_methods(noisy, baseline="B")
    assert [(c["a"], c["b"]) for c in vs] == [("A", "B"), ("C", "B"), ("D", "B")]
    assert summary([0.5]) == {"mean": 0.5, "std": None, "n": 1}  # one run: no spread


@pytest.mark.parametrize("seed", range(5))
def test_a_difference_above_the_needed_one_always_passes(seed: int) -> None:
    """needed_difference is a guarantee, whatever the data: |A - B| above it is a finding (Holm is
    never stricter than Bonferroni), and the figure shrinks with more seeds."""
    rng = np.random.default_rng(seed)
    per_seed = {m: dict(enumerate(rng.normal(shift, 0.01, size=4))) for m, shift in zip("ABCDE", (0.70, 0.71, 0.75, 0.80, 0.70))}
    comps = compare_methods(per_seed)
    for c in comps:
        if abs(c["mean_diff"]) > c["needed"]:
            assert c["finding"] in ("a > b", "a < b")
    sd = 0.01
    assert needed_difference(sd / np.sqrt(10), 10, 10) < needed_difference(sd / np.sqrt(3), 3, 10)
    # the seeds a 1-point difference needs: the first n whose needed difference is below it
    n = seeds_needed(sd, 0.01, 19)
    assert needed_difference(sd / np.sqrt(n), n, 19) < 0.01 <= needed_difference(sd / np.sqrt(n - 1), n - 1, 19)
    assert seeds_needed(sd, 0.01, 1) < n < seeds_needed(sd, 0.005, 19)
    plan = planning(comps, difference=0.01)
    sds = sorted(c["se"] * np.sqrt(c["n"]) for c in comps)
    assert plan["tests"] == len(comps) == 10 and plan["sd"] == pytest.approx(sds[5])
    assert plan["seeds"] == seeds_needed(sds[5], 0.01, 10)
    assert needed_difference(0.01, 3, 1) < needed_difference(0.01, 3, 100)


# ------------------------------------------------------------------------------ grouping


def test_lr_sweep_with_one_seed_gives_two_rows_not_one_row_over_seeds(tmp_path: Path) -> None:
    # python train.py -m norm=ln optim.lr=0.001,0.005: two runs, same seed, different learning rates
    fake_run(tmp_path / "sweep" / "0", "LN", 0, 0.40, lr=0.001)
    fake_run(tmp_path / "sweep" / "1", "LN", 0, 0.50, lr=0.005)
    rows = group_runs(collect_runs(tmp_path / "sweep"))
    assert sorted(r["label"] for r in rows) == ["LN [optim.lr=0.001]", "LN [optim.lr=0.005]"]
    md = write_table(tmp_path / "sweep", measure_latency=False).md.read_text()
    row = md_row(md, "LN [optim.lr=0.001]")
    assert row["Test Acc (%)"] == "40.00 (n=1)" and row["Runs (seeds)"] == "1 (0)"
    assert row["Data"] == "cifar10_mini" and row["Model"] == "vit_micro_conv" and row["Epochs"] == "3"
    assert "not testable (1 paired seed)" in md


def test_seeds_of_one_config_form_one_row_and_output_paths_do_not_split_it(tmp_path: Path) -> None:
    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        fake_run(tmp_path / f"dyt{seed}", "DyT-Finetune", seed, acc)
    for seed, acc in enumerate([0.80, 0.85, 0.90]):
        fake_run(tmp_path / f"ln{seed}", "LN-Finetune", seed, acc)
    fake_run(tmp_path / "lnfail", "LN-Finetune", 3, None, status="failed")
    (tmp_path / "dyt0" / "checkpoints").mkdir()
    (tmp_path / "dyt0" / "checkpoints" / "results.json").write_text("{}")  # never a run
    report = build_report(tmp_path)
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {"DyT-Finetune", "LN-Finetune"}
    assert rows["DyT-Finetune"]["stats"]["test_acc"]["mean"] == pytest.approx(0.92)
    assert rows["DyT-Finetune"]["stats"]["test_acc"]["std"] == pytest.approx(0.02)
    assert rows["LN-Finetune"]["stats"]["failed"] == 1 and rows["LN-Finetune"]["stats"]["n"] == 3
    (comp,) = report["comparisons"]["cifar10_mini"]
    assert comp["n"] == 3 and comp["seeds"] == [0, 1, 2]
    assert comp["mean_diff"] == pytest.approx(0.07)
    md = write_table(tmp_path, measure_latency=False).md.read_text()
    assert md_row(md, "DyT-Finetune")["Test Acc (%)"] == "92.00 ± 2.00"
    assert "RuntimeError: loss is NaN \\| step 3" in md
    assert "- **DyT-Finetune**: DyT-Finetune legend" in md
    assert "Which rows beat which" not in md
    with open(tmp_path / "summary_results.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 7 and {ln["Status"] for ln in lines} == {"completed", "failed"}


def test_stored_identity_is_preferred_and_repeated_seeds_are_flagged(tmp_path: Path) -> None:
    ident = {"identity": {"config_hash_without_seed": "abc", "config_hash": "x"}}
    fake_run(tmp_path / "a", "LN", 0, 0.5, results_extra=ident, lr=0.001)
    fake_run(tmp_path / "b", "LN", 0, 0.6, results_extra=ident, lr=0.005)  # same stored identity
    (row,) = build_report(tmp_path)["rows"]
    assert row["stats"]["repeated_seeds"] and row["stats"]["n"] == 2
    md = write_table(tmp_path, measure_latency=False).md.read_text()
    assert "repeated seed" in md_row(md, "LN")["Runs (seeds)"]


def test_data_sets_are_not_mixed_unless_asked(tmp_path: Path) -> None:
    fake_run(tmp_path / "m", "LN", 0, 0.9, data="mnist")
    fake_run(tmp_path / "c", "LN", 0, 0.4, data="cifar10")
    with pytest.raises(MixedDataError, match="--allow-mixed"):
        write_table(tmp_path, measure_latency=False)
    md = write_table(tmp_path, measure_latency=False, allow_mixed=True).md.read_text()
    assert md.count("| LN |") == 2


# ------------------------------------------------------------------------------ CIFAR-10-C


def _rob(folder: Path, cells: dict, sources: dict) -> None:
    (folder / "robustness.json").write_text(json.dumps({"cifar10c": cells, "cifar10c_source": sources}))


def test_cifar10c_section_needs_the_same_complete_cells(tmp_path: Path) -> None:
    src = {"fog": "generated", "snow": "generated"}
    for seed in (0, 1):
        _rob(fake_run(tmp_path / f"ln{seed}", "LN-Finetune", seed, 0.5),
             {"fog": {"1": 0.6, "2": 0.4}, "snow": {"1": 0.8, "2": 0.8}}, src)
    # errors: seed 0 fog 0.2/0.5, snow 0.2/0.4; seed 1 fog 0.4/0.5, snow 0.2/0.4
    _rob(fake_run(tmp_path / "a0", "AutoNorm-soft-Finetune", 0, 0.5), {"fog": {"1": 0.8, "2": 0.5}, "snow": {"1": 0.8, "2": 0.6}}, src)
    _rob(fake_run(tmp_path / "a1", "AutoNorm-soft-Finetune", 1, 0.5), {"fog": {"1": 0.6, "2": 0.5}, "snow": {"1": 0.8, "2": 0.6}}, src)
    _rob(fake_run(tmp_path / "d0", "DyT-Finetune", 0, 0.5), {"fog": {"1": 0.6, "2": None}, "snow": {"1": 0.8, "2": 0.8}}, src)
    _rob(fake_run(tmp_path / "o0", "OnlyDyT", 0, 0.5), {"fog": {"1": 0.6, "2": 0.4}, "snow": {"1": 0.8, "2": 0.8}},
         {"fog": "npy", "snow": "generated"})
    sec = build_report(tmp_path)["corruptions"]
    assert sec["baseline"] == "LN-Finetune" and sec["rows"]["LN-Finetune"]["mce"]["mean"] == pytest.approx(1.0)
    auto = sec["rows"]["AutoNorm-soft-Finetune"]
    # baseline errors fog 0.4 + 0.6 = 1.0, snow 0.2 + 0.2 = 0.4
    assert auto["mce"]["mean"] == pytest.approx(((0.7 / 1.0 + 0.6 / 0.4) + (0.9 / 1.0 + 0.6 / 0.4)) / 4)
    assert auto["c_mean_acc"]["mean"] == pytest.approx(((0.8 + 0.5 + 0.8 + 0.6) + (0.6 + 0.5 + 0.8 + 0.6)) / 8)
    assert auto["c_mean_acc"]["std"] is not None and auto["c_mean_acc"]["n"] == 2
    assert "DyT-Finetune" not in sec["rows"] and "fog/2" in sec["incomplete"]["DyT-Finetune"]
    assert "sources differ" in sec["incomplete"]["OnlyDyT"]
    md = write_table(tmp_path, measure_latency=False).md.read_text()
    assert "DyT-Finetune: not comparable, left out (missing fog/2)" in md


# ------------------------------------------------------------------------------ latency and the command


def test_interleaved_latency_measures_every_model_with_fixed_threads(tmp_path: Path) -> None:
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2048), torch.nn.Linear(2048, 10))
    before = torch.get_num_threads()
    res = interleaved_latency({"small": small, "big": big}, batch_sizes=(1, 64), threads=1, rounds=3, warmup=1, min_block_s=0.005)
    assert res["threads"] == 1 and torch.get_num_threads() == before and res["batch_sizes"] == [1, 64]
    for m in res["models"].values():
        assert m["ms_per_sample"]["1"] > 0 and m["images_per_s"]["64"] == pytest.approx(1000.0 / m["ms_per_sample"]["64"])
    assert res["models"]["big"]["ms_per_sample"]["64"] > res["models"]["small"]["ms_per_sample"]["64"]
    assert res["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")  # it changes the figures: always recorded
    fake_run(tmp_path / "r", "LN-Finetune", 0, 0.5)
    for policy, words in (("passive", "OMP_WAIT_POLICY=passive"), (None, "OMP_WAIT_POLICY unset (the OpenMP default)")):
        assert words in render_markdown(build_report(tmp_path, latency={**res, "omp_wait_policy": policy}))
    assert isinstance(res["malloc_tuned"], bool)  # so is the allocator's setting
    for tuned, words in ((True, "malloc's thresholds raised"), (False, "malloc's thresholds at their defaults")):
        assert words in render_markdown(build_report(tmp_path, latency={**res, "malloc_tuned": tuned}))


def test_planned_family_tests_only_its_pairs_and_needs_a_smaller_difference() -> None:
    assert family_pairs(["A,B:C,D", "D:A", "A:A"]) == [("A", "C"), ("A", "D"), ("B", "C"), ("B", "D")]
    for bad in ("A,B", "A:B:C", ":B", "A,:"):
        with pytest.raises(ValueError, match="A1,A2:B1,B2"):
            family_pairs([bad])
    rng = np.random.default_rng(0)
    per_seed = {m: dict(enumerate(rng.normal(0.7, 0.01, size=3))) for m in "ABCDEFGH"}
    everything = {(c["a"], c["b"]): c for c in compare_methods(per_seed)}
    planned = compare_methods(per_seed, pairs=family_pairs(["A:B,C", "A:Z"]))
    assert [(c["a"], c["b"]) for c in planned] == [("A", "B"), ("A", "C"), ("A", "Z")]
    assert planned[2]["finding"] == "not testable (0 paired seeds)"  # a row the table lacks
    assert planned[0]["p"] == everything[("A", "B")]["p"]  # the same test, a smaller family
    assert planned[0]["needed"] < everything[("A", "B")]["needed"]
    assert planned[0]["p_holm"] <= everything[("A", "B")]["p_holm"]
    with pytest.raises(ValueError, match="either baseline or pairs"):
        compare_methods(per_seed, baseline="A", pairs=[("A", "B")])


def test_compare_command_with_a_planned_family(tmp_path: Path) -> None:
    for seed in range(3):
        for method, acc in (("LN-Finetune", 0.5), ("DyT-Finetune", 0.6), ("AFN-Finetune", 0.7)):
            fake_run(tmp_path / "s" / f"{method}{seed}", method, seed, acc + 0.01 * seed * (method == "DyT-Finetune"))
    run = [sys.executable, "-m", "autonorm.compare", str(tmp_path / "s"), "--no-latency"]
    proc = subprocess.run([*run, "--family", "AFN-Finetune:LN-Finetune,DyT-Finetune"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "Planned comparisons only" in proc.stdout
    tested = {tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {("AFN-Finetune", "LN-Finetune"), ("AFN-Finetune", "DyT-Finetune")} <= tested
    assert ("DyT-Finetune", "LN-Finetune") not in tested  # not planned: not tested
    bad = subprocess.run([*run, "--family", "AFN-Finetune"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "--family" in bad.stderr


def test_compare_command(tmp_path: Path) -> None:
    for seed in range(2):
        fake_run(tmp_path / "s" / f"{seed}", "LN-Finetune", seed, 0.5 + 0.1 * seed)
    run = [sys.executable, "-m", "autonorm.compare"]
    proc = subprocess.run([*run, str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--no-latency"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "| LN-Finetune |" in proc.stdout and (tmp_path / "o" / "summary_results.png").is_file()
    missing = subprocess.run([*run, str(tmp_path / "nope")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert missing.returncode == 1 and "not found" in missing.stderr
    fake_run(tmp_path / "s" / "m", "LN-Finetune", 0, 0.9, data="mnist")
    mixed = subprocess.run([*run, str(tmp_path / "s"), "--no-latency"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert mixed.returncode == 2 and "--allow-mixed" in mixed.stderr


def test_time_to_accuracy_target_is_met_only_when_every_seed_reaches_it() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tta_script", REPO / "scripts" / "time_to_accuracy.py")
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    fast = [{"test_acc": "0.985", "train_time_s": "100", "wall_s": "150"}, {"test_acc": "0.991", "train_time_s": "200", "wall_s": "250"}]
    faster = [{"test_acc": "0.992", "train_time_s": "120", "wall_s": "170"}]
    never = [{"test_acc": "0.989", "train_time_s": "120", "wall_s": "170"}]
    assert tta.target_cell([fast, faster], 0.99, 300) == "160 ± 57 s / 210 ± 57 s (2/2 seeds); met"
    assert tta.target_cell([fast, faster, never], 0.99, 300).endswith("(2/3 seeds); not met")
    assert tta.target_cell([fast, faster], 0.99, 200).endswith("not met")  # one seed past the budget
    assert tta.target_cell([never], 0.99, 300) == "not reached (0/1 seeds); not met"


def test_copies_of_the_seed_in_the_resolved_config_do_not_split_a_row(tmp_path: Path) -> None:
    # conf/data/*.yaml hold `seed: ${seed}`: config.yaml has data.seed equal to each run's seed
    for seed in (0, 1):
        run = fake_run(tmp_path / f"r{seed}", "LN", seed, 0.5)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"]["seed"] = seed
        cfg["eval"] = {"eval_seed": 1234}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (row,) = group_runs(collect_runs(tmp_path))
    assert row["label"] == "LN" and [r["seed"] for r in row["runs"]] == [0, 1]


def test_jobs_an_interrupted_sweep_did_not_run_are_listed(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", "LN", 0, 0.5)
    (tmp_path / "NOT_RUN.json").write_text(json.dumps({"signal": "SIGTERM", "not_run": [str(tmp_path / "b")]}))
    md = write_table(tmp_path, measure_latency=False).md.read_text()
    assert "## Not run: the sweep was interrupted by SIGTERM" in md and "- `b`" in md


def _ident(src: str | None, commit: str | None = "0123456789abcdef", dirty: bool | None = False, row: str = "ln") -> dict:
    return {"identity": {"config_hash_without_seed": row, "config_hash": "c", "source_hash": src,
                         "git_commit": commit, "git_dirty": dirty}}


def test_every_row_names_its_code_and_runs_of_different_code_are_not_pooled(tmp_path: Path) -> None:
    for seed in range(2):  # the same configuration run by two code versions
        fake_run(tmp_path / f"old{seed}", "LN", seed, 0.5, results_extra=_ident("aaaaaaaa11112222"))
        fake_run(tmp_path / f"new{seed}", "LN", seed, 0.7, results_extra=_ident("bbbbbbbb33334444", dirty=True))
    fake_run(tmp_path / "dyt", "DyT", 0, 0.6, results_extra=_ident("aaaaaaaa11112222", row="dyt"))
    rows = {r["label"]: r for r in build_report(tmp_path)["rows"]}
    assert set(rows) == {"LN [code aaaaaaaa]", "LN [code bbbbbbbb]", "DyT"}
    assert rows["LN [code aaaaaaaa]"]["stats"]["test_acc"]["std"] == 0.0 and not rows["LN [code aaaaaaaa]"]["mixed_code"]
    md = write_table(tmp_path, measure_latency=False).md.read_text()
    assert md_row(md, "LN [code bbbbbbbb]")["Code"] == "bbbbbbbb (git 0123456, dirty)"
    assert md_row(md, "DyT")["Code"] == "aaaaaaaa (git 0123456)"
    assert "mixed code" not in md and "separate rows, labelled `code <hash>`" in md
    with open(tmp_path / "summary_results.csv", newline="") as fh:
        assert {ln["Source hash"] for ln in csv.DictReader(fh)} == {"aaaaaaaa11112222", "bbbbbbbb33334444"}
    # pooled when asked: one LN row over both versions, flagged in the row and explained under the table
    pooled = {r["label"]: r for r in build_report(tmp_path, split_code=False)["rows"]}
    assert pooled["LN"]["mixed_code"] and pooled["LN"]["stats"]["n"] == 4
    md = write_table(tmp_path, measure_latency=False, split_code=False).md.read_text()
    assert md_row(md, "LN")["Code"].startswith("⚠ mixed code: aaaaaaaa") and "Rows marked '⚠ mixed code' (LN)" in md


def test_code_of_a_failed_run_comes_from_its_identity_file(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "f", "LN", 0, None, status="failed")
    (run / "identity.json").write_text(json.dumps(_ident("cccccccc55556666", commit=None, dirty=None)["identity"]))
    fake_run(tmp_path / "old", "LN", 1, 0.5)  # no identity at all
    codes = {r["rel"]: r["code_label"] for r in collect_runs(tmp_path)}
    assert codes == {"f": "cccccccc (no git)", "old": "unknown"}
