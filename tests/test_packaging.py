"""The package outside the repository: a wheel installed into a fresh venv trains; metadata."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import REPO


def test_dependencies_are_ranges_and_the_pins_live_in_constraints() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in meta["dependencies"]}
    assert not [d for d in meta["dependencies"] if "==" in d], "exact pins belong in constraints.txt"
    assert deps["torch"].startswith("torch>=")
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert "torch" in pins and "torchvision" in pins
    assert meta["scripts"] == {"autonorm-train": "autonorm.__main__:train_main", "autonorm-eval": "autonorm.__main__:eval_main"}
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    assert (REPO / "LICENSE").is_file() and (REPO / "CITATION.cff").is_file()


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_trains_outside_the_repo(tmp_path: Path) -> None:
    # build the wheel from a copy of the working tree (no build folders in the checkout)
    src = tmp_path / "src-copy"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "outputs", ".venv", "*.egg-info", "__pycache__", "build", "dist", "local"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True, timeout=600)
    wheel = next(dist.glob("autonorm-*.whl"))

    # a fresh venv that sees this environment's packages (torch is not installed again) through
    # a .pth line, behind its own site-packages, so the wheel's autonorm wins over any other copy
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    fresh_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (fresh_site / "outer.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)], check=True, timeout=600)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUTONORM_OUTPUT_ROOT", "AUTONORM_DATA_ROOT")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import autonorm; print(autonorm.__file__)"], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(fresh_site)), where.stdout

    proc = subprocess.run([str(venv / "bin" / "autonorm-train"), "debug=fast", "eval=none"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = work / "outputs" / "runs" / "train" / "debug=fast,eval=none"
    assert (run / "COMPLETED").is_file() and (run / "results.json").is_file()
    assert "test acc" in proc.stdout

    helped = subprocess.run([str(py), "-m", "autonorm", "eval", "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "data: cifar10, cifar10_mini, mnist, mnist_mini" in helped.stdout
