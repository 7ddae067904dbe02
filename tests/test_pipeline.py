"""Tests for autonorm.pipeline: atomic writes, run markers, phase cache, baseline table, make_table CLI."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autonorm.pipeline import (
    PhaseCache,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    build_table,
    collect_runs,
    config_key,
    is_completed,
    mark_completed,
    mark_failed,
    write_table,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ io


def test_atomic_path_keeps_old_file_when_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp != target
            with open(tmp, "w") as fh:
                fh.write("half of the new con")
                fh.flush()
                raise RuntimeError("boom")
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file lingers


def test_atomic_path_writer_that_writes_nothing_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_writes_roundtrip_and_markers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    atomic_write_text(run / "a.txt", "hello\n")  # creates parents
    assert (run / "a.txt").read_text() == "hello\n"
    atomic_write_json(run / "r.json", {"acc": 0.5, "path": Path("/x"), "n": None})
    assert json.loads((run / "r.json").read_text()) == {"acc": 0.5, "path": "/x", "n": None}
    atomic_write_text(run / "a.txt", "replaced")
    assert (run / "a.txt").read_text() == "replaced"

    assert not is_completed(run)
    mark_failed(run, "RuntimeError: first attempt")
    assert (run / "FAILED").read_text().startswith("RuntimeError")
    mark_completed(run, {"method": "ln"})
    assert is_completed(run)
    info = json.loads((run / "COMPLETED").read_text())
    assert info["method"] == "ln" and "completed_at" in info
    assert not (run / "FAILED").exists()  # stale FAILED from the earlier attempt is removed
    assert sorted(p.name for p in run.iterdir()) == ["COMPLETED", "a.txt", "r.json"]


def test_atomic_torch_save(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    p = tmp_path / "ckpt" / "model.ckpt"
    atomic_torch_save({"w": torch.arange(3)}, p)
    assert torch.equal(torch.load(p)["w"], torch.arange(3))
    assert [q.name for q in p.parent.iterdir()] == ["model.ckpt"]


# ------------------------------------------------------------------------------------------------ cache


def test_config_key_stable_and_sensitive() -> None:
    a = {"lr": 1e-3, "model": {"depth": 4, "dim": 64}, "data": "mnist"}
    b = {"data": "mnist", "model": {"dim": 64, "depth": 4}, "lr": 1e-3}
    k = config_key(a)
    assert k == config_key(b)
    assert len(k) == 16 and all(c in "0123456789abcdef" for c in k)
    assert k == config_key(json.loads(json.dumps(a)))  # same after a JSON roundtrip
    assert config_key({**a, "lr": 2e-3}) != k
    assert config_key({**a, "model": {"depth": 5, "dim": 64}}) != k


def _write_ckpt(tmp_dir: Path, payload: bytes = b"weights") -> None:
    (tmp_dir / "model.ckpt").write_bytes(payload)


def test_get_or_create_builds_once_then_hits(tmp_path: Path) -> None:
    cache = PhaseCache(tmp_path / "cache")
    calls: list[Path] = []

    def build(tmp_dir: Path) -> None:
        calls.append(tmp_dir)
        _write_ckpt(tmp_dir)
        (tmp_dir / "train_log.txt").write_text("extra artefact")

    assert cache.get("pretrain", "abc") is None
    p1 = cache.get_or_create("pretrain", "abc", build, meta={"dataset": "mnist"})
    assert p1 == cache.path_for("pretrain", "abc") == tmp_path / "cache" / "pretrain" / "abc" / "model.ckpt"
    assert p1.read_bytes() == b"weights"
    assert (p1.parent / "DONE").is_file()
    assert (p1.parent / "train_log.txt").read_text() == "extra artefact"
    meta = json.loads((p1.parent / "meta.json").read_text())
    assert meta["phase"] == "pretrain" and meta["key"] == "abc" and meta["meta"] == {"dataset": "mnist"}
    assert len(calls) == 1 and not calls[0].exists()  # temp build folder cleaned up

    p2 = cache.get_or_create("pretrain", "abc", build)
    assert p2 == p1 and len(calls) == 1  # hit: build_fn not called again
    assert cache.get("pretrain", "abc") == p1
    # other key / phase are separate entries
    cache.get_or_create("pretrain", "other", build)
    cache.get_or_create("finetune", "abc", build)
    assert len(calls) == 3
    # nothing but entries and lock files under the phase folder
    assert sorted(p.name for p in (tmp_path / "cache" / "pretrain").iterdir()) == [
        "abc", "abc.lock", "other", "other.lock"
    ]


def test_failing_build_leaves_nothing_valid_and_later_call_builds(tmp_path: Path) -> None:
    cache = PhaseCache(tmp_path / "cache")

    def bad(tmp_dir: Path) -> None:
        _write_ckpt(tmp_dir, b"half")
        raise ValueError("diverged")

    with pytest.raises(ValueError, match="diverged"):
        cache.get_or_create("pretrain", "k1", bad)
    entry = cache.path_for("pretrain", "k1").parent
    assert not (entry / "DONE").exists()
    assert not (entry / "model.ckpt").exists()
    assert cache.get("pretrain", "k1") is None
    leftovers = [p.name for p in (tmp_path / "cache" / "pretrain").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []

    # build_fn that forgets the checkpoint is an error too
    with pytest.raises(FileNotFoundError, match="model.ckpt"):
        cache.get_or_create("pretrain", "k1", lambda d: None)
    assert cache.get("pretrain", "k1") is None

    # the lock was released: a later call builds normally
    p = cache.get_or_create("pretrain", "k1", _write_ckpt)
    assert p.read_bytes() == b"weights" and cache.get("pretrain", "k1") == p


def test_entry_without_done_is_not_a_hit(tmp_path: Path) -> None:
    cache = PhaseCache(tmp_path)
    ckpt = cache.path_for("pretrain", "k")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"stale, interrupted")  # no DONE marker
    assert cache.get("pretrain", "k") is None
    p = cache.get_or_create("pretrain", "k", _write_ckpt)
    assert p.read_bytes() == b"weights"


def _concurrent_worker(root: str, counter: str, barrier, results) -> None:
    def build(tmp_dir: Path) -> None:
        time.sleep(1.0)
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        _write_ckpt(tmp_dir)

    barrier.wait(timeout=30)
    p = PhaseCache(root).get_or_create("pretrain", "shared", build)
    results.put(str(p))


def test_concurrent_processes_build_exactly_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    counter = tmp_path / "counter.txt"
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_concurrent_worker, args=(str(tmp_path / "cache"), str(counter), barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    paths = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1  # build_fn ran exactly once
    assert paths[0] == paths[1]
    assert Path(paths[0]).read_bytes() == b"weights"
    assert (Path(paths[0]).parent / "DONE").is_file()


# ------------------------------------------------------------------------------------------------ table

DYT_TEST = [0.90, 0.92, 0.94]
DYT_VAL = [0.91, 0.93, 0.95]
DYT_LAT = [1.0, 2.0, 3.0]
LN_TEST = [0.80, 0.85, 0.90]
LN_VAL = [0.81, 0.86, 0.91]


def _fake_run(run: Path, method: str, seed: int, **metrics) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- seed={seed}\n")
    res = {
        "method": method, "seed": seed, "val_acc": None, "test_acc": None, "params": 12345,
        "flops_per_sample": None, "latency_ms_per_sample": None, "noise_acc": None,
        "rotation_acc": None, "train_time_s": 10.0 + seed, "norm": method, "gate": "none", "transfer": "none",
    }
    res.update(metrics)
    (run / "results.json").write_text(json.dumps(res))
    (run / "checkpoints").mkdir()
    (run / "COMPLETED").write_text("{}")


def _fake_sweep(root: Path) -> Path:
    sweep = root / "multirun" / "2024-01-01" / "12-00-00"
    i = 0
    for seed in range(3):
        _fake_run(sweep / str(i), "dyt", seed, val_acc=DYT_VAL[seed], test_acc=DYT_TEST[seed],
                  latency_ms_per_sample=DYT_LAT[seed], rotation_acc=0.5 if seed == 0 else None)
        i += 1
        _fake_run(sweep / str(i), "ln", seed, val_acc=LN_VAL[seed], test_acc=LN_TEST[seed],
                  flops_per_sample=2.5e6)
        i += 1
    # a results.json inside checkpoints/ must not be taken for a run
    (sweep / "0" / "checkpoints" / "results.json").write_text(json.dumps({"method": "bogus"}))
    # failed job: traceback in FAILED, method only in .hydra/config.yaml
    failed = sweep / str(i)
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("method: autonorm\nseed: 0\nlr: 0.001\n")
    (failed / "FAILED").write_text(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: loss is NaN | step 12\n"
    )
    i += 1
    # failed job with a very long single-line error
    failed2 = sweep / str(i)
    (failed2 / ".hydra").mkdir(parents=True)
    (failed2 / ".hydra" / "overrides.yaml").write_text("- method=ln\n- seed=3\n")
    (failed2 / "FAILED").write_text("OOM " + "x" * 500 + "\nsecond line\n")
    i += 1
    # unfinished job (still running or killed): only .hydra
    unfinished = sweep / str(i)
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "overrides.yaml").write_text("- method=dyt\n- seed=4\n")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def _md_method_row(md: str, method: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == method:
            return cells
    raise AssertionError(f"no row for {method} in\n{md}")


def _md_header(md: str) -> list[str]:
    for line in md.splitlines():
        if line.startswith("| Method |"):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(md)


def test_collect_runs_statuses(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    runs = collect_runs(tmp_path / "multirun")
    assert len(runs) == 9
    assert all("checkpoints" not in r["rel"] for r in runs)
    by_status = {s: [r for r in runs if r["status"] == s] for s in ("completed", "failed", "unfinished")}
    assert len(by_status["completed"]) == 6 and len(by_status["failed"]) == 2 and len(by_status["unfinished"]) == 1
    tb = next(r for r in runs if r["rel"].endswith(os.sep + "6"))
    assert tb["method"] == "autonorm" and tb["seed"] == 0
    assert tb["error"] == "RuntimeError: loss is NaN | step 12"
    long = next(r for r in runs if r["rel"].endswith(os.sep + "7"))
    assert long["method"] == "ln" and long["seed"] == 3
    assert long["error"].startswith("OOM xxx") and len(long["error"]) <= 200
    unf = by_status["unfinished"][0]
    assert (unf["method"], unf["seed"], unf["error"]) == ("dyt", 4, "")
    with pytest.raises(FileNotFoundError):
        collect_runs(sweep / "does-not-exist")


def test_build_table_stats(tmp_path: Path) -> None:
    _fake_sweep(tmp_path)
    per_run, per_method = build_table(collect_runs(tmp_path))
    assert [m["Method"] for m in per_method] == ["autonorm", "dyt", "ln"]
    dyt = next(m for m in per_method if m["Method"] == "dyt")
    assert (dyt["n"], dyt["failed"], dyt["unfinished"]) == (3, 0, 1)
    assert dyt["Test Acc"]["mean"] == pytest.approx(statistics.mean(DYT_TEST))
    assert dyt["Test Acc"]["std"] == pytest.approx(statistics.stdev(DYT_TEST))  # ddof=1
    assert dyt["Latency (ms/sample)"]["std"] == pytest.approx(1.0)
    assert dyt["Noise Acc"] is None  # never reported -> missing, not 0
    assert dyt["Rotation Acc"] == {"mean": 0.5, "std": None, "n": 1}
    ln = next(m for m in per_method if m["Method"] == "ln")
    assert (ln["n"], ln["failed"], ln["unfinished"]) == (3, 1, 0)
    assert ln["Test Acc"]["std"] == pytest.approx(0.05)
    auto = next(m for m in per_method if m["Method"] == "autonorm")
    assert (auto["n"], auto["failed"]) == (0, 1) and auto["Test Acc"] is None
    # per-run rows: sorted by method then seed; failed rows carry no metrics
    assert [(r["Method"], r["Seed"]) for r in per_run][:4] == [("autonorm", 0), ("dyt", 0), ("dyt", 1), ("dyt", 2)]
    failed_row = next(r for r in per_run if r["Method"] == "autonorm")
    assert failed_row["Test Acc"] is None and failed_row["Status"] == "failed"
    # explicit method order
    _, pm = build_table(collect_runs(tmp_path), method_order=["ln", "dyt"])
    assert [m["Method"] for m in pm] == ["ln", "dyt", "autonorm"]


def test_write_table_csv_md_png(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    out = tmp_path / "report"
    paths = write_table(sweep, out_dir=out)
    assert paths.csv == out / "summary_results.csv" and paths.md.parent == out and paths.png.parent == out

    # --- csv: one row per run, raw numbers, empty for missing
    with open(paths.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9
    assert list(rows[0])[:2] == ["Method", "Seed"]
    done = [r for r in rows if r["Status"] == "completed"]
    assert sorted(float(r["Test Acc"]) for r in done if r["Method"] == "dyt") == DYT_TEST
    assert all(r["Noise Acc"] == "" for r in rows)
    assert all(r["FLOPs (per sample)"] == "" for r in done if r["Method"] == "dyt")
    assert all(float(r["FLOPs (per sample)"]) == 2.5e6 for r in done if r["Method"] == "ln")
    failed = [r for r in rows if r["Status"] == "failed"]
    assert {r["Method"] for r in failed} == {"autonorm", "ln"}
    assert any(r["Error"] == "RuntimeError: loss is NaN | step 12" for r in failed)
    assert all(r["Test Acc"] == "" for r in failed)
    assert [r["Method"] for r in rows if r["Status"] == "unfinished"] == ["dyt"]

    # --- md: one row per method, mean ± std in %, n, failed counts, missing cells empty
    md = paths.md.read_text()
    header = _md_header(md)
    dyt = dict(zip(header, _md_method_row(md, "dyt")))
    ln = dict(zip(header, _md_method_row(md, "ln")))
    auto = dict(zip(header, _md_method_row(md, "autonorm")))
    assert dyt["Test Acc (%)"] == "92.00 ± 2.00"
    assert dyt["Val Acc (%)"] == "93.00 ± 2.00"
    assert dyt["Latency (ms/sample)"] == "2 ± 1"
    assert dyt["Noise Acc (%)"] == ""
    assert dyt["FLOPs (per sample)"] == ""
    assert dyt["Rotation Acc (%)"] == "50.00 ± — (n=1)"
    assert (dyt["n"], dyt["failed"], dyt["unfinished"]) == ("3", "0", "1")
    assert ln["Test Acc (%)"] == "85.00 ± 5.00"
    assert ln["FLOPs (per sample)"] == "2.5M ± 0"
    assert ln["Params"] == "12,345 ± 0"
    assert (ln["n"], ln["failed"]) == ("3", "1")
    assert (auto["n"], auto["failed"], auto["Test Acc (%)"]) == ("0", "1", "")
    section = md.split("## Failed / unfinished jobs", 1)[1]
    assert "RuntimeError: loss is NaN \\| step 12" in section  # pipe escaped for Markdown
    assert "OOM xxx" in section and "second line" not in section
    assert "unfinished" in section and section.count("\n| ") == 4  # header + 3 jobs

    # --- png
    assert paths.png.stat().st_size > 1000
    assert paths.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no temp files left behind
    assert sorted(p.name for p in out.iterdir()) == ["summary_results.csv", "summary_results.md", "summary_results.png"]


def test_write_table_empty_sweep(tmp_path: Path) -> None:
    paths = write_table(tmp_path)
    assert "No finished runs" in paths.md.read_text()
    assert paths.csv.read_text().splitlines()[0].startswith("Method,Seed,")
    assert len(paths.csv.read_text().splitlines()) == 1
    assert paths.png.stat().st_size > 0


def test_make_table_script(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path)
    out = tmp_path / "out"
    script = REPO / "scripts" / "make_table.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(sweep), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr  # failed jobs are listed, not an error
    assert "92.00 ± 2.00" in proc.stdout and "Failed / unfinished jobs" in proc.stdout
    assert (out / "summary_results.csv").is_file() and (out / "summary_results.png").is_file()

    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "not found" in proc.stderr


def test_mce_relative_to_the_ln_baseline_from_fake_runs(tmp_path):
    import json as _json

    from autonorm.pipeline import io as pio
    from autonorm.pipeline.table import corruption_table, write_table

    def run(name, method, seed, cells):
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(_json.dumps({"method": method, "seed": seed, "test_acc": 0.5}))
        (d / "robustness.json").write_text(_json.dumps({"cifar10c": cells}))
        pio.mark_completed(d)

    # baseline errors: fog 0.4 / 0.6 (sum 1.0), snow 0.2 / 0.2 (sum 0.4)
    run("a", "LN-Finetune", 0, {"fog": {"1": 0.6, "2": 0.4}, "snow": {"1": 0.8, "2": 0.8}})
    # AutoNorm, two seeds averaging to errors fog 0.3 / 0.5 (sum 0.8) and snow 0.2 / 0.4 (sum 0.6)
    run("b", "AutoNorm", 0, {"fog": {"1": 0.8, "2": 0.5}, "snow": {"1": 0.8, "2": 0.6}})
    run("c", "AutoNorm", 1, {"fog": {"1": 0.6, "2": 0.5}, "snow": {"1": 0.8, "2": 0.6}})
    from autonorm.pipeline.table import collect_runs

    rows = {r["Method"]: r for r in corruption_table(collect_runs(tmp_path))}
    assert rows["LN-Finetune"]["mCE"] == pytest.approx(1.0)
    assert rows["AutoNorm"]["mCE"] == pytest.approx((0.8 / 1.0 + 0.6 / 0.4) / 2)
    assert rows["AutoNorm"]["C mean Acc"] == pytest.approx(1 - (0.3 + 0.5 + 0.2 + 0.4) / 4)
    assert rows["AutoNorm"]["n"] == 2
    md = write_table(tmp_path).md.read_text()
    assert "CIFAR-10-C (mCE relative to LN-Finetune" in md and "1.150" in md


def test_no_cifar10c_no_corruption_section(tmp_path):
    from autonorm.pipeline.table import collect_runs, corruption_table

    assert corruption_table(collect_runs(tmp_path)) == []
