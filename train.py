"""Train one run: ``python train.py norm=afn gate=gumbel`` (``-m`` for a sweep). See README."""

import os

# Busy 2-core machines make spinning OpenMP threads up to 7x slower; sleeping threads cost little.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import autonorm.resolvers  # noqa: F401,E402  (registers ${run_slug:...} before Hydra resolves paths)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from autonorm.cli import run_job, train

    return run_job(cfg, train)


if __name__ == "__main__":
    main()
