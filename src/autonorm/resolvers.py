"""OmegaConf resolvers used by the configs; registered on import (``train.py`` imports this first).

``${run_name:}`` names a run folder after the run's identity and ``${launch_stamp:}`` names a
sweep folder uniquely per launch (both in :mod:`autonorm.pipeline.identity`); ``${help_groups:...}``
lists a command's config groups in its ``--help``; ``${data_stats:NAME,mean|std}`` gives a data
set's per-channel normalisation constants from their one home, :data:`autonorm.data.npz.DATASET_STATS`.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from autonorm.pipeline.identity import register_resolvers


def help_groups(*groups: str) -> str:
    """``group: option, option`` lines for ``--help`` (only the groups a command uses)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in groups)


def data_stats(name: str, key: str) -> list[float]:
    """``${data_stats:cifar10,mean}``: the per-channel ``mean`` or ``std`` of a known data set."""
    from autonorm.data.npz import DATASET_STATS

    if name not in DATASET_STATS or key not in ("mean", "std"):
        raise ValueError(f"data_stats takes one of {sorted(DATASET_STATS)} and mean|std, got {name!r}, {key!r}")
    return [float(v) for v in DATASET_STATS[name][key]]


def register() -> None:
    register_resolvers()
    if not OmegaConf.has_resolver("help_groups"):
        OmegaConf.register_new_resolver("help_groups", help_groups)
    if not OmegaConf.has_resolver("data_stats"):
        OmegaConf.register_new_resolver("data_stats", data_stats)


register()
