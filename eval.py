"""Evaluate a checkpoint: ``python eval.py ckpt_path=... [data=cifar10 data.root=...]``. See README."""

import os

# Busy 2-core machines make spinning OpenMP threads up to 7x slower; sleeping threads cost little.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import autonorm.resolvers  # noqa: F401,E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from autonorm.cli import evaluate_checkpoint, run_job

    run_job(cfg, evaluate_checkpoint)


if __name__ == "__main__":
    main()
