"""The norm registry: every registered norm has its config, trains, evaluates, deploys and gets a
table row; the registry is what config validation, row names, logging and deploy read; the
import rules of the package hold."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf
from torch import nn

from autonorm.config import ConfigError, method_name, validate
from autonorm.norms import NORM_REGISTRY, NORMS, deploy_model, get_norm, norm_names, norm_state, register_norm
from autonorm.norms.deploy import deploy_module

from conftest import CONF, REPO

SRC = REPO / "src" / "autonorm"


def _norm_yaml(name: str) -> dict:
    return yaml.safe_load((CONF / "norm" / f"{name}.yaml").read_text())


# ------------------------------------------------------------------------ registry <-> conf/norm
def test_every_registered_norm_has_its_yaml_and_every_yaml_is_registered() -> None:
    assert {"ln", "dyt", "autonorm", "afn"} <= set(norm_names())
    assert set(norm_names()) == {p.stem for p in (CONF / "norm").glob("*.yaml")}
    for name in norm_names():
        cfg = _norm_yaml(name)
        assert cfg["name"] == name
        assert get_class(cfg["_target_"]) is NORM_REGISTRY[name].cls
        assert NORMS[name] is NORM_REGISTRY[name].cls


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "norm").glob("*.yaml")))
def test_every_norm_config_validates_and_names_its_row(make_cfg, name: str) -> None:
    cfg = make_cfg(f"norm={name}")
    validate(cfg)
    row = method_name(cfg)
    assert row == get_norm(name).display_name(OmegaConf.to_container(cfg.norm, resolve=True))
    assert row and " " not in row


def test_unknown_norm_name_is_rejected_naming_the_key(make_cfg) -> None:
    cfg = make_cfg()
    cfg.norm.name = "rmsnorm"
    with pytest.raises(ConfigError, match=r"norm\.name must be one of .*ln"):
        validate(cfg)
    with pytest.raises(ValueError, match="unknown norm 'rmsnorm'; registered: "):
        get_norm("rmsnorm")


def test_autonorm_row_name_carries_its_gate(make_cfg) -> None:
    assert method_name(make_cfg("norm=autonorm", "gate=gumbel", "transfer=freeze")) == "AutoNorm-gumbel-Freeze"
    assert method_name(make_cfg("norm=dyt", "transfer=finetune")) == "DyT-Finetune"


# ----------------------------------------------------------------- a new norm is one registration
class _ScaleNorm(nn.Module):
    """x / rms(x) * g with a learnable scalar g (Nguyen and Salazar, 2019, "Transformers without
    Tears"): a norm defined only in this test."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class _DeployedScaleNorm(_ScaleNorm):
    pass


def test_a_registered_norm_is_validated_named_logged_and_deployed(make_cfg) -> None:
    register_norm("scalenorm", display="ScaleNorm", logs={"g": "g", "g2": lambda m: m.g * 2, "none": "missing.attr"},
                  deploy=lambda m: _DeployedScaleNorm(1))(_ScaleNorm)
    try:
        cfg = make_cfg("transfer=finetune")
        cfg.norm = OmegaConf.create({"name": "scalenorm", "_target_": f"{__name__}._ScaleNorm"})
        validate(cfg)
        assert method_name(cfg) == "ScaleNorm-Finetune"
        model = nn.Sequential(nn.Linear(4, 4), _ScaleNorm(4))
        assert norm_state(model) == {"g/1": 2.0, "g2/1": 4.0}
        assert isinstance(deploy_model(model)[1], _DeployedScaleNorm)
        assert "scalenorm" in NORMS and NORMS["scalenorm"] is _ScaleNorm
    finally:
        NORM_REGISTRY.pop("scalenorm")
    assert deploy_module(_ScaleNorm(4)) is None and norm_state(model) == {}
    with pytest.raises(ValueError, match="already registered"):
        register_norm("dyt", display="x")(_ScaleNorm)


# ---------------------------------------------------------------------- the whole pipeline per norm
@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "norm").glob("*.yaml")))
def test_every_norm_trains_evaluates_deploys_and_gets_a_table_row(make_cfg, tmp_path: Path, name: str) -> None:
    from autonorm.cli import train
    from autonorm.pipeline.table import build_report
    from autonorm.tasks import load_model_checkpoint

    run_dir = tmp_path / "sweep" / name
    cfg = make_cfg(f"norm={name}", "eval.plots=false", "callbacks.norm_state.every_n_steps=1", run_dir=run_dir)
    train(cfg)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["norm"] == name and 0.0 <= results["test_acc"] <= 1.0
    assert results["noise_acc"] is not None and results["flops_per_sample"] > 0
    # the trained model reloads and its deployed copy computes the same eval outputs
    model = load_model_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.deploy()(x), model(x), rtol=1e-4, atol=1e-5)
    # the metrics CSV logged the norm's declared scalars during training
    logged = set((run_dir / "metrics.csv").read_text().splitlines()[0].split(","))
    state = norm_state(model)
    assert bool(state) == bool(get_norm(name).logs)
    assert {k for k in state if k != "tau"} <= logged, (state, logged)
    # and the table has its row, named as the registry names it
    rows = build_report(tmp_path / "sweep")["rows"]
    assert [row["method"] for row in rows] == [get_norm(name).display_name(OmegaConf.to_container(cfg.norm, resolve=True))]
    assert rows[0]["stats"]["n"] == 1


# ---------------------------------------------------------------------------------- import rules
def _imports(path: Path) -> list[tuple[int, str]]:
    """``(level, module)`` of every import in ``path`` (level > 0: relative)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            out += [(node.level, f"{mod}.{a.name}" if mod else a.name) for a in node.names]
    return out


def test_norms_import_nothing_else_of_the_project() -> None:
    for path in sorted((SRC / "norms").glob("*.py")):
        for level, mod in _imports(path):
            assert level <= 1, f"{path.name} imports {'.' * level}{mod} from outside norms/"
            assert not (level == 0 and mod.split(".")[0] == "autonorm" and not mod.startswith("autonorm.norms")), (
                f"{path.name} imports {mod}"
            )


def test_kernels_import_only_norms_of_the_project() -> None:
    """kernels/ builds on norms/ and on cpuload.py (standard library only), nothing else of the package."""
    allowed = ("norms", "cpuload")
    files = sorted((SRC / "kernels").glob("*.py"))
    assert files
    for path in files:
        for level, mod in _imports(path):
            if level == 2:  # from ..<x> import: the package above, i.e. autonorm.<x>
                assert mod.split(".")[0] in allowed, f"kernels/{path.name} imports ..{mod}"
            else:
                assert level <= 1, f"kernels/{path.name} imports {'.' * level}{mod}"
                parts = mod.split(".")
                assert not (level == 0 and parts[0] == "autonorm" and (len(parts) < 2 or parts[1] not in allowed)), (
                    f"kernels/{path.name} imports {mod}"
                )


def test_cpuload_imports_the_standard_library_only() -> None:
    for level, mod in _imports(SRC / "cpuload.py"):
        assert level == 0 and mod.split(".")[0] in ("__future__", "os", "time", "pathlib", "typing"), mod


def test_nothing_in_the_package_or_scripts_imports_cli() -> None:
    files = [p for p in SRC.rglob("*.py") if p.name not in ("cli.py", "__main__.py")]
    files += sorted((REPO / "scripts").glob("*.py"))
    for path in files:
        pkg = path.relative_to(REPO / "src").parent.parts if path.is_relative_to(REPO / "src") else ()
        for level, mod in _imports(path):
            absolute = mod if level == 0 else ".".join(list(pkg[: len(pkg) - level + 1]) + [mod])
            assert not (absolute == "autonorm.cli" or absolute.startswith("autonorm.cli.")), f"{path} imports {absolute}"
