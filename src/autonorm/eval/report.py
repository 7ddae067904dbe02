"""Everything that is written into a run folder after training (and by ``eval.py``).

``evaluate_run`` scores robustness, profiles FLOPs / params / latency, draws the plots and saves
the norm weights, each step guarded so that one failing piece gives a warning and empty values,
never a crashed run or an invented number. It returns the flat numbers the baseline table uses.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from autonorm.pipeline.io import atomic_torch_save, atomic_write_json

log = logging.getLogger("autonorm")


def _guard(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # one broken piece must not lose the finished training run
        warnings.warn(f"{name} failed and is left empty: {type(exc).__name__}: {exc}")
        log.exception("%s failed", name)
        return None


def norm_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """All parameters and buffers of every norm point (gates included), keyed by full name."""
    out: dict[str, torch.Tensor] = {}
    for point, module in model.norm_points():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            out[f"{point}.{name}"] = tensor.detach().cpu().clone()
    return out


def run_title(run_dir: Path) -> str:
    """What a figure belongs to: method, seed, data and model from the run's config.yaml."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run_dir / "config.yaml")
        return f"{cfg.method} · seed {cfg.seed} · {cfg.data.name} · {cfg.model.name}"
    except Exception:  # eval.py's folder, or a run without its config: the folder's name
        return run_dir.name


def make_plots(model: nn.Module, datamodule: Any, run_dir: Path) -> dict[str, Path]:
    from autonorm import viz

    name = run_dir.name
    run = run_title(run_dir)
    plots: dict[str, Path] = {}
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        columns = metrics.read_text().split("\n", 1)[0].split(",")

        def logged(*prefixes: str) -> bool:
            return any(c.startswith(prefixes) for c in columns)

        plots["curves"] = _guard("curves plot", lambda: viz.plot_curves(metrics, run_dir / f"{name}_accuracy_loss.png", run=run))
        if logged("gate/", "tau"):
            plots["gates_over_training"] = _guard(
                "gate/temperature plot",
                lambda: viz.plot_series(metrics, ("gate/", "tau"), run_dir / "gates_over_training.png", "AutoNorm gates (LN weight) and Gumbel temperature", own_axis=("tau",), run=run),
            )
        if logged("slope/"):  # beside the gates: which DyT the gates pick (alpha near 0: a linear map)
            plots["dyt_slopes"] = _guard(
                "DyT slope plot",
                lambda: viz.plot_series(metrics, ("slope/",), run_dir / "dyt_slopes.png", "DyT effective slope at 0 (alpha x weight, mean over channels)"),
            )
        if logged("lambda_"):
            plots["afn_lambdas"] = _guard("AFN lambda plot", lambda: viz.plot_series(metrics, ("lambda_",), run_dir / "afn_lambdas.png", "AFN residual weights (lambdas)", run=run))
    grads = run_dir / "grad_norms.json"
    if grads.exists():
        plots["grad_heatmap"] = _guard("gradient heatmap", lambda: viz.plot_grad_heatmap(grads, run_dir / "grad_heatmap.png", run=run))
    x = datamodule.test_x[:8]
    plots["attention"] = _guard("attention maps", lambda: viz.plot_attention(model, x, datamodule.normalize, run_dir / "attention_rollout.png", run=run))
    if any(hasattr(m, "last_gate") for m in model.modules()):
        xs, ys = datamodule.test_x[:1000], datamodule.test_y[:1000]
        gates = _guard("gate values", lambda: viz.collect_gate_values(model, xs, datamodule.normalize))
        if gates:
            plots["gates"] = _guard("gate plot", lambda: viz.plot_gates(gates, ys, datamodule.classes, run_dir / "gate_weights.png", run=run))
    return {k: Path(v) for k, v in plots.items() if v}


def evaluate_run(
    model: nn.Module,
    datamodule: Any,
    eval_cfg: Any,
    run_dir: Path,
    loggers: Sequence[Any] = (),
) -> dict[str, Any]:
    """Robustness, profile, plots and norm weights into ``run_dir``; returns table numbers."""
    run_dir = Path(run_dir)
    model = model.eval().cpu()
    out: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "noise_acc": None,
        "rotation_acc": None,
        "flops_per_sample": None,
        "norm_flops_per_sample": None,
        "latency_ms_per_sample": None,
    }
    if eval_cfg.get("robustness"):
        from autonorm.eval.robustness import evaluate_robustness

        rob = _guard(
            "robustness suite",
            lambda: evaluate_robustness(
                model, datamodule.test_x, datamodule.test_y, datamodule.normalize,
                sigma=float(eval_cfg.noise_sigma), max_deg=float(eval_cfg.rotation_deg), seed=int(eval_cfg.eval_seed),
                cifar10c=bool(eval_cfg.cifar10c), severities=tuple(eval_cfg.cifar10c_severities),
                cifar10c_dir=eval_cfg.get("cifar10c_dir"), max_images=eval_cfg.get("max_images"),
                dataset=getattr(datamodule, "name", None), test_index=getattr(datamodule, "test_index", None),
            ),
        )
        if rob:
            atomic_write_json(run_dir / "robustness.json", rob)
            out.update(noise_acc=rob.get("noise_acc"), rotation_acc=rob.get("rotation_acc"), c_mean_acc=rob.get("c_mean_acc"))
    if eval_cfg.get("domains"):
        from autonorm.eval.domains import score_domains, write_domain_details

        details = _guard("domain generalisation", lambda: score_domains(model, datamodule, eval_cfg))
        if details:
            out["domains"] = write_domain_details(run_dir, details)
    if eval_cfg.get("profile"):
        from autonorm.eval.profile import profile_model

        prof = _guard("profile", lambda: profile_model(model, batch_sizes=tuple(eval_cfg.latency_batch_sizes)))
        if prof:
            atomic_write_json(run_dir / "profile.json", prof)
            out.update(
                flops_per_sample=prof.get("flops_per_sample"),
                norm_flops_per_sample=prof.get("norm_flops_per_sample"),
                # batch-1 forward time of one image (ms), as in profile.json; tables measure their own
                latency_ms_per_sample=prof.get("latency_ms_per_sample"),
            )
    if eval_cfg.get("plots"):
        images = make_plots(model, datamodule, run_dir) or {}
        from autonorm.loggers import log_plots

        log_plots(loggers, images)
    if eval_cfg.get("save_norm_weights"):
        _guard("norm weights", lambda: atomic_torch_save(norm_weights(model), run_dir / f"norm_weights_{run_dir.name}.pt"))
    return out
