"""What the AutoNorm gates and DyT slopes of finished runs look like on their test sets.

    python scripts/gate_stats.py outputs/runs/train/<run> [<run> ...]

For each run folder (``config.yaml``, ``results.json``, ``checkpoints/best.ckpt``) it rebuilds
the model, runs the test set through it in eval mode, and prints one Markdown row: test
accuracy, the fraction of gate values that are saturated (``a < 0.01`` or ``a > 0.99``, over
every AutoNorm point and test image), the mean gate, and the DyT branches' effective slope
``alpha * weight`` at 0 (mean over channels; the smallest |alpha| is listed too, since an alpha
near 0 makes DyT a linear map).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from autonorm.norms import AutoNorm, DyT
from autonorm.tasks import load_model_checkpoint

SATURATED = 0.01


@torch.no_grad()
def gate_stats(run: Path) -> dict[str, float]:
    cfg = OmegaConf.load(run / "config.yaml")
    results = json.loads((run / "results.json").read_text())
    ckpt = results.get("best_checkpoint") or str(run / "checkpoints" / "best.ckpt")
    model = load_model_checkpoint(ckpt).eval()
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    points = [m for m in model.modules() if isinstance(m, AutoNorm)]
    gates: list[torch.Tensor] = []
    for x, _ in datamodule.test_dataloader():
        model(x)
        gates.extend(p.last_gate.float() for p in points if p.last_gate is not None)
    a = torch.cat(gates) if gates else torch.empty(0)
    dyts = [m for m in model.modules() if isinstance(m, DyT)]
    slopes = [float((d.alpha * d.weight).mean()) for d in dyts]
    return {
        "config": f"gate.features={cfg.gate.get('features', 'mean')} norm.alpha_param={cfg.norm.get('alpha_param', 'direct')}",
        "seed": int(cfg.seed),
        "test_acc": results.get("test_acc"),
        "saturated": float(((a < SATURATED) | (a > 1 - SATURATED)).float().mean()) if a.numel() else float("nan"),
        "gate_mean": float(a.mean()) if a.numel() else float("nan"),
        "slope_mean": sum(slopes) / len(slopes) if slopes else float("nan"),
        "min_abs_alpha": min(abs(float(d.alpha)) for d in dyts) if dyts else float("nan"),
    }


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    m = statistics.mean(values) * scale
    return f"{m:.{digits}f}" + (f" ± {statistics.stdev(values) * scale:.{digits}f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    rows = sorted((gate_stats(run) for run in args.runs), key=lambda s: (s["config"], s["seed"]))
    print("| config | seed | test acc | saturated gates | mean gate | mean DyT slope | min abs alpha |")
    print("|---|---|---|---|---|---|---|")
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in rows:
        groups[s["config"]].append(s)
        acc = "" if s["test_acc"] is None else f"{100 * s['test_acc']:.2f}%"
        print(f"| {s['config']} | {s['seed']} | {acc} | {100 * s['saturated']:.1f}% | {s['gate_mean']:.3f} | {s['slope_mean']:.3f} | {s['min_abs_alpha']:.3f} |")
    print("\nMean ± sample std over seeds:\n")
    print("| config | n | test acc (%) | saturated gates (%) | mean DyT slope | min abs alpha |")
    print("|---|---|---|---|---|---|")
    for config, items in groups.items():
        accs = [s["test_acc"] for s in items if s["test_acc"] is not None]
        print(f"| {config} | {len(items)} | {_mean_std(accs, 100)} | {_mean_std([s['saturated'] for s in items], 100, 1)} | "
              f"{_mean_std([s['slope_mean'] for s in items], 1, 3)} | {_mean_std([s['min_abs_alpha'] for s in items], 1, 3)} |")


if __name__ == "__main__":
    main()
