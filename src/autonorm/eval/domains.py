"""Single-source domain generalisation: score an MNIST-trained model on other digit domains.

``eval.domains=[uci_digits,syn_digits,mnist_m,svhn,usps]`` (see :mod:`autonorm.data.domains` for
what each target is and where it comes from). Every model sees the very same target images (built
from ``eval.domain_seed``, at most ``eval.domain_size`` per target, cached in
``eval.domain_cache_dir``), normalised with the *source* (MNIST) statistics, as the model was
trained. A target that cannot be had here (SVHN / USPS absent from the data root) is reported as
unavailable with the reason and gets no number; a model not trained on MNIST is not scored.

Results: ``results.json["domains"]`` maps each target to its accuracy (fraction, or null) and
``robustness.json["domains"]`` holds the details (accuracy, images, provenance, status).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from autonorm.data.domains import DOMAIN_NAMES, DomainUnavailable, load_domain
from autonorm.data.npz import DataError, dataset_path
from autonorm.errors import AutoNormError
from autonorm.pipeline.io import atomic_write_json

from .robustness import accuracy

__all__ = ["MNIST_SOURCES", "check_domain_names", "evaluate_domains", "score_domains", "write_domain_details"]

log = logging.getLogger("autonorm")

#: data sets a model must have been trained on for the digit targets to make sense
MNIST_SOURCES = ("mnist", "mnist_mini")


def check_domain_names(names: Sequence[str]) -> list[str]:
    """The list of target names, or :class:`AutoNormError` naming ``eval.domains`` and the choices."""
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in names]
    bad = [n for n in names if n not in DOMAIN_NAMES]
    if bad:
        raise AutoNormError(f"eval.domains has unknown target(s) {', '.join(bad)}; choose from {', '.join(DOMAIN_NAMES)}")
    if len(set(names)) != len(names):
        raise AutoNormError(f"eval.domains lists a target twice ({', '.join(names)})")
    return names


def _textures(root: str) -> Path:
    """CIFAR-10 for MNIST-M's patches: ``<root>/cifar10.npz`` if there, else the shipped mini."""
    full = dataset_path("cifar10", root)
    return full if full.is_file() else dataset_path("cifar10_mini")


def evaluate_domains(
    model: nn.Module,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    names: Sequence[str],
    *,
    source_x: torch.Tensor,
    source_y: torch.Tensor,
    source_name: str,
    root: str = "data",
    cache_dir: Optional[str] = None,
    size: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, dict[str, Any]]:
    """Accuracy of ``model`` on each target in ``names``; one record per target.

    Args:
        normalize: the source data's normalisation (the model's training input statistics).
        source_x, source_y: the source test images (N, 3, 32, 32) uint8 and labels: the digits of
            MNIST-M.
        source_name: the source data set's name (recorded in MNIST-M's provenance).
    Returns:
        ``{name: {"acc": float | None, "n": int, "status": "ok" | "unavailable" | "failed",
        "provenance": str, "reason": str}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in check_domain_names(names):
        try:
            kwargs: dict[str, Any] = {}
            if name == "mnist_m":
                digits = source_x[:, 0].cpu().numpy()  # grey: the three channels are equal
                kwargs = {"source": (digits, source_y.cpu().numpy(), f"{source_name} test images"), "textures": _textures(root)}
            dom = load_domain(name, n=int(size), seed=int(seed), root=root, cache_dir=cache_dir, **kwargs)
            x = torch.from_numpy(dom.x).permute(0, 3, 1, 2).contiguous()
            acc = accuracy(model, x, torch.from_numpy(dom.y), normalize, batch_size=batch_size)
            out[name] = {"acc": acc, "n": int(dom.x.shape[0]), "status": "ok", "provenance": dom.provenance, "reason": ""}
        except DomainUnavailable as exc:
            log.info("domain %s not scored: %s", name, exc)
            out[name] = {"acc": None, "n": 0, "status": "unavailable", "provenance": "", "reason": str(exc)}
        except (DataError, OSError, RuntimeError, ValueError) as exc:  # one target must not lose the others
            warnings.warn(f"domain {name} could not be scored and is left empty: {type(exc).__name__}: {exc}")
            out[name] = {"acc": None, "n": 0, "status": "failed", "provenance": "", "reason": f"{type(exc).__name__}: {exc}"}
    return out


def score_domains(model: nn.Module, datamodule: Any, eval_cfg: Any) -> Optional[dict[str, dict[str, Any]]]:
    """:func:`evaluate_domains` with the settings of ``eval_cfg`` on a run's data module.

    Returns None (with a warning) when the model was not trained on MNIST: the digit targets
    measure generalisation *from MNIST*.
    """
    names = list(eval_cfg.get("domains") or [])
    if not names:
        return None
    source = str(getattr(datamodule, "name", ""))
    if source not in MNIST_SOURCES:
        warnings.warn(f"eval.domains scores MNIST-trained models only; this run's data is '{source}': not scored")
        return None
    return evaluate_domains(
        model, datamodule.normalize, names,
        source_x=datamodule.test_x, source_y=datamodule.test_y, source_name=source,
        root=str(getattr(datamodule, "root", "data")),
        cache_dir=eval_cfg.get("domain_cache_dir"),
        size=int(eval_cfg.get("domain_size", 2000)), seed=int(eval_cfg.get("domain_seed", 0)),
    )


def write_domain_details(run_dir: Path, details: dict[str, dict[str, Any]]) -> dict[str, Optional[float]]:
    """Add ``details`` to ``run_dir/robustness.json`` under ``domains``; return ``{name: acc}`` for results.json."""
    path = Path(run_dir) / "robustness.json"
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = {}
    data["domains"] = details
    atomic_write_json(path, data)
    return {name: rec["acc"] for name, rec in details.items()}
