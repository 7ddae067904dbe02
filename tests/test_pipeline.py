"""Tests for autonorm.pipeline: atomic writes, run markers, phase cache (the results table: test_compare.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from autonorm.pipeline import (
    PhaseCache,
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    config_key,
    is_completed,
    mark_completed,
    mark_failed,
)
from autonorm.pipeline.interrupt import RunInterrupted

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


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(1), RunInterrupted(signal.SIGTERM)], ids=type)
def test_interrupted_build_keeps_its_folder_for_the_next_build(tmp_path: Path, stop: BaseException) -> None:
    cache = PhaseCache(tmp_path / "cache")
    seen: list[list[str]] = []

    def interrupted(build_dir: Path) -> None:
        (build_dir / "progress.txt").write_text("half")
        raise stop

    def resumes(build_dir: Path) -> None:
        seen.append(sorted(p.name for p in build_dir.iterdir()))
        _write_ckpt(build_dir, (build_dir / "progress.txt").read_bytes() + b" + rest")

    with pytest.raises(type(stop)):
        cache.get_or_create("pretrain", "k", interrupted)
    assert cache.get("pretrain", "k") is None
    assert (cache.build_dir("pretrain", "k") / "progress.txt").read_text() == "half"
    p = cache.get_or_create("pretrain", "k", resumes)
    assert seen == [["progress.txt"]] and p.read_bytes() == b"half + rest"
    assert json.loads((p.parent / "meta.json").read_text())["resumed"] is True
    assert not cache.build_dir("pretrain", "k").exists()  # the finished build's folder is gone


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
