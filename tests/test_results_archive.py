"""The sweeps of `make dg` / `make table-recipe` and the committed result archives they keep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autonorm import configs
from autonorm.pipeline import archive

from conftest import CONF, REPO


def _compose(*overrides: str):
    return configs.compose(overrides)


def _params(sweep: str) -> dict:
    return configs.compose([f"sweep={sweep}"], return_hydra_config=True).hydra.sweeper.params


@pytest.mark.parametrize("variant,norm,gate", [("LN", "ln", None), ("DyT", "dyt", None), ("AutoNorm-soft", "autonorm", "soft"), ("AutoNorm-gumbel", "autonorm", "gumbel"), ("AFN-batch", "afn", None), ("AFN-running", "afn", None), ("Derf", "derf", None)])
def test_dg_sweep_trains_each_student_at_the_fast_mnist_budget(variant, norm, gate):
    assert variant in _params("dg")["+dg"].split(",")
    cfg = _compose("experiment=fast_mnist", "sweep=dg", f"+dg={variant}")
    ref = _compose("experiment=fast_mnist", f"norm={norm}", f"gate={gate or 'soft'}")
    assert cfg.norm.name == norm and (gate is None or cfg.gate.kind == gate)
    assert cfg.data.name == "mnist" and cfg.model.name == ref.model.name
    assert cfg.trainer.max_epochs == ref.trainer.max_epochs and cfg.optim == ref.optim
    assert list(cfg.eval.domains)[:3] == ["uci_digits", "syn_digits", "mnist_m"]
    sweep_dir = yaml.safe_load((CONF / "sweep" / "dg.yaml").read_text())["hydra"]["sweep"]["dir"]
    assert sweep_dir.endswith("dg/fast_mnist") and _params("dg")["experiment"] == "fast_mnist"


def test_recipe_table_rows_exist_and_share_the_fast_cifar10_budget():
    rows = _params("table_recipe")["experiment"].split(",")
    assert len(rows) == len(set(rows)) and {r for r in rows if not (CONF / "experiment" / f"{r}.yaml").is_file()} == set()
    assert "Teacher" in rows and any(r.endswith("KD") for r in rows)
    recipe = _compose("experiment=fast_cifar10", "norm=afn")
    modes = set()
    for row in rows:
        cfg = _compose("sweep=table_recipe", f"experiment={row}")
        modes.add(cfg.transfer.mode)
        assert cfg.data.name == "cifar10" and cfg.model.name == recipe.model.name
        assert cfg.trainer.max_epochs == recipe.trainer.max_epochs and cfg.data.batch_size == recipe.data.batch_size
        assert cfg.optim == recipe.optim and cfg.transfer.pretrain.max_epochs == recipe.transfer.pretrain.max_epochs
        assert cfg.transfer.pretrain.data == "mnist"
    assert {"finetune", "freeze", "none"} <= modes  # the experiment's transfer mode is kept, not the recipe's
    kd = _compose("sweep=table_recipe", "experiment=AutoNorm-soft-Finetune-KD")
    assert kd.distill.teacher.max_epochs >= kd.trainer.max_epochs  # the teacher trains at least as long


def _fake_run(folder: Path, overrides: list[str], status: str = "completed", acc: float = 0.5) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text("large: file\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"0" * 100)
    if status == "failed":
        (folder / "FAILED").write_text("RuntimeError: boom\n")
        return
    method = next(o.split("=")[1] for o in overrides if o.startswith("experiment="))
    seed = int(next(o.split("=")[1] for o in overrides if o.startswith("seed=")))
    (folder / "results.json").write_text(json.dumps({"method": method, "seed": seed, "test_acc": acc, "val_acc": acc}))
    (folder / "metrics.csv").write_text("epoch,val/acc\n0,0.5\n")
    (folder / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    (folder / "COMPLETED").write_text("{}")


def test_collect_restore_round_trip_lists_what_is_missing(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "seed": 0,
        "hydra": {
            "sweeper": {"params": {"experiment": "A,B", "seed": "0,1"}},
            "overrides": {"task": ["sweep=x", "trainer.max_epochs=3", "paths.output_root=/here"]},
            "job": {"config": {"override_dirname": {"exclude_keys": ["paths.output_root"]}}},
        },
    }))
    # the runs were made with another output root: not part of what makes a job that job
    jobs = {(e, s): ["sweep=x", f"experiment={e}", f"seed={s}", "trainer.max_epochs=3", "paths.output_root=/there"] for e in "AB" for s in (0, 1)}
    ident = {k: [o for o in v if not o.startswith("paths.")] for k, v in jobs.items()}
    _fake_run(sweep / "experiment=A,seed=0", jobs["A", 0], acc=0.6)
    _fake_run(sweep / "experiment=A,seed=1", jobs["A", 1], acc=0.7)
    _fake_run(sweep / "experiment=B,seed=0", jobs["B", 0], status="failed")

    expected = [[o for o in j if o != "paths.output_root=/here"] for j in archive.expected_jobs(sweep / "multirun.yaml")]
    assert sorted(map(sorted, expected)) == sorted(map(sorted, ident.values()))
    dest = tmp_path / "docs" / "results" / "t"
    stats = archive.collect(sweep, dest)
    assert stats["runs"] == 2
    kept = dest / "experiment=A,seed=0"
    assert {p.name for p in kept.iterdir()} == {"results.json", "metrics.csv", "config.yaml", "COMPLETED", ".hydra"}
    assert not (kept / "checkpoints").exists() and not (kept / ".hydra" / "hydra.yaml").exists()
    assert not (dest / "experiment=B,seed=0").exists()  # a failed job is not kept: it trains again
    assert archive.collect(sweep, dest)["files"] == 0  # collecting again changes nothing

    cov = archive.coverage(dest)
    assert cov["expected"] == 4 and cov["completed"] == 2
    assert sorted(cov["missing"]) == sorted(sorted(ident[k]) for k in (("B", 0), ("B", 1)))
    md = archive.write_archive_table(dest).read_text()
    assert md.startswith("**Incomplete: 2 of 4 expected jobs finished; 2 missing**")
    assert "experiment=B seed=0" in md and "| A |" in md

    # a fresh sweep folder (another machine, or the outputs deleted): the committed runs come back
    fresh = tmp_path / "fresh"
    assert archive.restore(dest, fresh) == 2
    assert (fresh / "experiment=A,seed=1" / "COMPLETED").is_file()
    assert json.loads((fresh / "experiment=A,seed=1" / "results.json").read_text())["test_acc"] == 0.7
    assert archive.restore(dest, fresh) == 0  # already completed there: left alone

    # every job finished: the table says it is whole
    import shutil

    shutil.rmtree(sweep / "experiment=B,seed=0")
    _fake_run(sweep / "experiment=B,seed=0", jobs["B", 0])
    _fake_run(sweep / "experiment=B,seed=1", jobs["B", 1])
    archive.collect(sweep, dest)
    assert archive.write_archive_table(dest).read_text().startswith("**Complete**: all 4 expected jobs finished.")

    # a job re-run under another folder name (e.g. a renamed run folder) replaces its archived copy
    shutil.move(sweep / "experiment=A,seed=1", sweep / "renamed")
    (sweep / "renamed" / "metrics.csv").unlink()
    archive.collect(sweep, dest)
    assert not (dest / "experiment=A,seed=1").exists() and (dest / "renamed" / "results.json").is_file()
    assert not (dest / "renamed" / "metrics.csv").exists()
    assert archive.coverage(dest)["completed"] == 4


def test_a_partial_rerun_never_shrinks_the_expected_jobs(tmp_path):
    """Continuing a table with a subset (one row, one seed) rewrites multirun.yaml with that subset
    only; the archive's record keeps the whole table, so it cannot read complete too early."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()

    def multirun(experiments: str, seeds: str) -> None:
        (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
            "sweeper": {"params": {"experiment": experiments, "seed": seeds}},
            "overrides": {"task": ["sweep=x"]},
            "job": {"config": {"override_dirname": {"exclude_keys": []}}},
        }}))

    multirun("A,B", "0,1")
    _fake_run(sweep / "A0", ["sweep=x", "experiment=A", "seed=0"])
    dest = tmp_path / "archive"
    archive.collect(sweep, dest)
    assert archive.coverage(dest)["expected"] == 4

    multirun("A", "1")  # `make table-recipe ROWS=A` with one seed
    _fake_run(sweep / "A1", ["sweep=x", "experiment=A", "seed=1"])
    archive.collect(sweep, dest)
    cov = archive.coverage(dest)
    assert (cov["expected"], cov["completed"]) == (4, 2)
    assert archive.write_archive_table(dest).read_text().startswith("**Incomplete: 2 of 4")

    multirun("A,B,C", "0,1")  # a row added to the table: the record grows
    archive.collect(sweep, dest)
    assert archive.coverage(dest)["expected"] == 6


def test_collect_script_on_a_missing_folder_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/collect_results.py", "collect", str(tmp_path / "nope"), str(tmp_path / "a")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "sweep folder not found" in proc.stderr


@pytest.mark.slow
def test_a_stopped_sweep_continues_from_its_archive(tmp_path):
    """Real multirun, archive, outputs deleted, same command again: the archived job is skipped."""
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "train.py", "-m", "debug=fast", "eval=none", "norm=ln,dyt", f"paths.output_root={tmp_path}",
           f"hydra.sweep.dir={tmp_path}/sweep"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    dest = tmp_path / "archive"
    assert archive.collect(tmp_path / "sweep", dest)["runs"] == 2
    dyt = next(p for p in dest.iterdir() if p.is_dir() and p.name.lower().startswith("dyt"))  # DyT_mnist_mini_s0-<hash>
    import shutil

    shutil.rmtree(dyt)  # as if that job had never finished
    shutil.rmtree(tmp_path / "sweep")
    assert archive.restore(dest, tmp_path / "sweep") == 1
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("Already completed") == 1
    archive.collect(tmp_path / "sweep", dest)
    assert archive.coverage(dest) == {"expected": 2, "completed": 2, "missing": []}


def _identity_run(sweep: Path, overrides: list[str], acc: float):
    """A finished run folder as the sweep names it now (``<method>_<data>_s<seed>-<hash>``), with its identity."""
    from autonorm.pipeline.identity import make_identity, public_identity, register_resolvers, write_identity

    register_resolvers()
    cfg = _compose(*overrides)
    ident = make_identity(cfg)
    run = sweep / ident["name"]
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    write_identity(run, ident)
    res = {"method": ident["config"]["method"], "seed": cfg.seed, "data": "mnist", "model": cfg.model.name, "test_acc": acc,
           "domains": {"uci_digits": acc - 0.3}, "identity": public_identity(ident)}
    (run / "results.json").write_text(json.dumps(res))
    (run / "COMPLETED").write_text("{}")
    return run, ident


def test_restored_identity_named_runs_are_skipped_only_by_the_same_code(tmp_path, capsys):
    from autonorm.pipeline.runfolder import RunRefused, plan_run

    jobs = [["experiment=fast_mnist", "sweep=dg", "+dg=LN", f"seed={s}"] for s in (0, 1)]
    made = [_identity_run(tmp_path / "sweep", job, 0.9 + s / 100) for s, job in enumerate(jobs)]
    assert all(run.name.startswith("LN_mnist_s") for run, _ in made)
    dest = tmp_path / "docs" / "results" / "dg"
    assert archive.collect(tmp_path / "sweep", dest)["runs"] == 2
    assert {p.name for p in dest.iterdir() if p.is_dir()} == {run.name for run, _ in made}
    assert archive.other_code(dest) == []

    fresh = tmp_path / "fresh"
    assert archive.restore(dest, fresh) == 2
    (run, ident), _ = made
    plan = plan_run(fresh / run.name, ident, "auto")  # the same config and code: the job is skipped
    assert plan.skip is not None and plan.skip["test_acc"] == pytest.approx(0.9)
    changed = {**ident, "source_hash": "f" * 16, "source_files": {**ident["source_files"], "norms/ln.py": "x"}}
    with pytest.raises(RunRefused, match=r"another configuration or code \(source changed \(norms/ln.py\)"):
        plan_run(fresh / run.name, changed, "auto")  # other code: named, never reused as this code's result
    assert sorted(rel for rel, _ in archive.other_code(dest, current="f" * 16)) == sorted(r.name for r, _ in made)

    # the page section: coverage-free archive table with the code of every row, the DG section and the paper's figures
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nintro\n\n<!-- results:dg -->\nstale text\n<!-- /results:dg -->\n\ntail\n")
    proc = subprocess.run([sys.executable, "scripts/results_doc.py", str(dest), "--title", "DG", "--reference", "afn-digits",
                           "--out", str(page), "--section", "dg"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert text.startswith("# Results\n\nintro\n") and text.rstrip().endswith("tail") and "stale text" not in text
    assert "\n## Domain generalisation" not in text and "\n### Domain generalisation from MNIST" in text
    assert f"(git {(ident['git_commit'] or '')[:7]}" in text or "(no git)" in text
    assert f"| {ident['source_hash'][:8]} (" in text and "| LN | mnist |" in text and "not measured" in text
    assert "### AFN paper, CNN, other target sets" in text and "| AFN | 33.8 | 81.2 | 63.8 |" in text
    assert "| BN | 27.8 | 76.9 | 52.7 |" in text and "| ASRNorm | 34.1 | 78.5 | 64.3 |" in text


def test_seed_readme_claims_are_labelled_as_not_reproduced(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import results_doc
    finally:
        sys.path.remove(str(REPO / "scripts"))
    md = results_doc.reference_section("seed-readme")
    assert "claimed, not reproduced" in md and "| AutoNorm-Finetune | 86.1 |" in md and "| FrozenLN | 74.5 |" in md
    assert results_doc.replace_section("", "x", "body") == "<!-- results:x -->\nbody\n<!-- /results:x -->\n"


@pytest.mark.parametrize("sweep", ["table_mini", "table_recipe"])
def test_table_sweeps_run_every_row_at_one_seed_before_the_next(tmp_path, sweep):
    """A table sweep stopped half-way leaves whole seeds: the expanded job order is seed-major."""
    cfg = configs.compose([f"sweep={sweep}"], return_hydra_config=True)
    multirun = tmp_path / "multirun.yaml"
    params = {str(k): str(v) for k, v in cfg.hydra.sweeper.params.items()}
    multirun.write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": params}, "overrides": {"task": [f"sweep={sweep}"]}}}, sort_keys=False))
    jobs = archive.expected_jobs(multirun)
    seeds = [int(next(o.split("=")[1] for o in job if o.startswith("seed="))) for job in jobs]
    rows = len(cfg.hydra.sweeper.params.experiment.split(","))
    assert len(jobs) == 3 * rows and seeds == sorted(seeds) == [s for s in (0, 1, 2) for _ in range(rows)]


def test_results_doc_finds_an_archived_runs_checkpoints_in_the_sweep_it_came_from(tmp_path):
    """``--checkpoints``: each archived run is measured on its twin in the sweep folder only when
    that twin has checkpoints and the same identity."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import results_doc
    finally:
        sys.path.remove(str(REPO / "scripts"))
    arch, sweep = tmp_path / "archive", tmp_path / "sweep"
    cached = tmp_path / "cache" / "teacher.ckpt"  # the Teacher row: its checkpoint is the cached teacher
    cached.parent.mkdir()
    cached.write_bytes(b"t")

    def run(name: str, twin: str, best: str = "/elsewhere/best.ckpt") -> dict:
        (arch / name).mkdir(parents=True)
        (arch / name / "identity.json").write_text(json.dumps({"name": name}))
        if twin != "absent":
            (sweep / name).mkdir(parents=True)
            (sweep / name / "identity.json").write_text(json.dumps({"name": name if twin != "other identity" else "x"}))
        if twin == "same":
            (sweep / name / "checkpoints").mkdir()
            (sweep / name / "checkpoints" / "last.ckpt").write_bytes(b"w")
        return {"status": "completed", "run_dir": str(arch / name), "results": {"best_checkpoint": best}}

    rows = [
        {"key": "a", "label": "A", "runs": [run("other", "other identity"), run("bare", "no checkpoints"), run("same", "same"),
                                           {"status": "failed", "run_dir": str(arch / "failed"), "results": {}}]},
        {"key": "t", "label": "Teacher", "runs": [run("teacher", "no checkpoints", best=str(cached))]},
        {"key": "g", "label": "Gone", "runs": [run("gone", "absent")]},
    ]
    lookup, missing, chosen = results_doc.twin_checkpoints(rows, arch, sweep)
    assert lookup(rows[0]) == sweep / "same" / "checkpoints" / "last.ckpt"  # the first run with a twin that has one
    assert lookup(rows[1]) == cached and lookup(rows[2]) is None
    assert chosen == {"a": arch / "same", "t": arch / "teacher"}
    assert missing == {"other": "another run there (identity.json differs)", "bare": "no checkpoints there", "gone": "not there"}
    proc = subprocess.run([sys.executable, "scripts/results_doc.py", str(arch), "--out", str(tmp_path / "r.md"), "--checkpoints", str(tmp_path / "nowhere")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--checkpoints: folder not found" in proc.stderr


def test_a_latency_measurement_is_kept_in_the_archive_for_the_runs_it_measured(tmp_path):
    """``--checkpoints`` measures where the sweep folder is; the archive keeps that measurement
    (machine, time, which run) and a rebuild from the archive alone shows it, except for a row
    whose measured run has since been replaced."""
    from autonorm.pipeline.collect import collect_runs, group_runs

    jobs = [["experiment=fast_mnist", "sweep=dg", f"+dg={v}", "seed=0"] for v in ("LN", "DyT")]
    made = [_identity_run(tmp_path / "sweep", job, 0.9) for job in jobs]
    dest = tmp_path / "archive"
    archive.collect(tmp_path / "sweep", dest)
    assert archive.load_latency(dest, []) is None  # nothing kept yet
    rows = group_runs(collect_runs(dest))
    by_method = {r["method"]: r for r in rows}
    latency = {"models": {r["key"]: {"ms_per_sample": {"1": 1.5 + i, "256": 0.05}, "images_per_s": {"1": 600.0, "256": 20000.0 + i}}
                          for i, r in enumerate(rows)},
               "threads": 2, "rounds": 7, "warmup": 3, "batch_sizes": [1, 256], "device": "cpu", "omp_wait_policy": None, "skipped": {}}
    archive.save_latency(dest, latency, {r["key"]: r["runs"][0]["run_dir"] for r in rows})
    kept = archive.load_latency(dest, rows)
    assert kept["models"] == latency["models"] and kept["skipped"] == {} and kept["measured_at"].endswith("UTC")
    assert kept["machine"] and json.loads((dest / "latency.json").read_text())["runs"][by_method["LN"]["key"]]["run"] == made[0][0].name

    # a rebuild of the page from the archive alone shows the kept figures and says where they come from
    page = tmp_path / "r.md"
    proc = subprocess.run([sys.executable, "scripts/results_doc.py", str(dest), "--out", str(page)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert f"measured on {kept['measured_at']}" in text and "kept in `latency.json`" in text
    assert "| 1.5 | 20,000 |" in text and "| 2.5 | 20,001 |" in text
    assert "| 1.5 | 20,000 |" in archive.write_archive_table(dest).read_text()  # the archive's own table too

    # the LN run is replaced by another run of the same job (here: its identity changes): its figure no longer holds
    ident = made[0][0] / "identity.json"
    ident.write_text(ident.read_text().replace("{", '{"note": "rerun", ', 1))
    archive.collect(tmp_path / "sweep", dest)
    kept = archive.load_latency(dest, group_runs(collect_runs(dest)))
    assert set(kept["models"]) == {by_method["DyT"]["key"]}
    assert "no longer archived as it was measured" in kept["skipped"]["LN"]
    (dest / "latency.json").write_text("{broken")
    with pytest.raises(ValueError, match="latency.json: unreadable latency record"):
        archive.load_latency(dest, rows)
