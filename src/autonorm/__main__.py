"""The command-line entry points: ``autonorm-train``, ``autonorm-eval`` and ``python -m autonorm``.

``python -m autonorm [overrides]`` trains (like ``autonorm-train``); ``python -m autonorm eval
ckpt_path=...`` evaluates (like ``autonorm-eval``). The configs ship inside the package.
"""

import os
import sys

# Busy 2-core machines make spinning OpenMP threads up to 7x slower; sleeping threads cost little.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from autonorm import CONF_DIR, resolvers  # noqa: E402

resolvers.register()  # ${run_name:} and the others, before Hydra resolves the run's paths

CONFIG_PATH = str(CONF_DIR)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train one run (``-m`` for a sweep); returns the optimized metric for sweepers."""
    from autonorm.cli import run_job, train
    from autonorm.runtime import tune_malloc

    tune_malloc()
    return run_job(cfg, train)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    """Evaluate a training checkpoint into outputs/runs/eval/<overrides>/."""
    from autonorm.cli import evaluate_checkpoint, run_job
    from autonorm.runtime import tune_malloc

    tune_malloc()
    run_job(cfg, evaluate_checkpoint)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("train", "eval"):
        command = sys.argv.pop(1)
    else:
        command = "train"
    (eval_main if command == "eval" else train_main)()


if __name__ == "__main__":
    main()
