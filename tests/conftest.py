"""Shared fixtures: compose the real Hydra configs (as lightning-hydra-template does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
from omegaconf import DictConfig, open_dict

from autonorm import configs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "autonorm" / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("norm=dyt", ...)`` -> composed train config writing into ``tmp_path``."""

    def _make(*overrides: str, config_name: str = "train", run_dir: Path | None = None) -> DictConfig:
        out = run_dir or tmp_path / "run"
        cfg = configs.compose(
            ["debug=fast", f"paths.output_root={tmp_path}", f"paths.data_root={tmp_path / 'data'}", *overrides], config_name=config_name
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
        return cfg

    return _make


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the C++ norm kernels once, here, before any test starts a subprocess: a subprocess
    killed mid-build (the SIGKILL resume tests) must never be the one holding the build."""
    from autonorm.kernels import native

    if native.enabled():
        native.ops()


@pytest.fixture(autouse=True)
def _seed_every_test() -> None:
    """Each test starts from the same global RNG state, whatever ran before it."""
    import torch

    torch.manual_seed(0)


def md_row(md: str, label: str) -> dict[str, str]:
    """The cells of the row ``label`` of a results table in Markdown (header ``| Row | Data ...``)."""
    header = None
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| Row | Data"):
            header = cells
        elif header and cells and cells[0] == label:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {label!r} in\n{md}")
