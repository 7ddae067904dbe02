"""OmegaConf resolvers used by the configs; registered on import (``train.py`` imports this first).

``${run_name:}`` names a run folder after the run's identity and ``${launch_stamp:}`` names a
sweep folder uniquely per launch (both in :mod:`autonorm.pipeline.identity`); ``${help_groups:...}``
lists a command's config groups in its ``--help``.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from autonorm.pipeline.identity import register_resolvers


def help_groups(*groups: str) -> str:
    """``group: option, option`` lines for ``--help`` (only the groups a command uses)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in groups)


def register() -> None:
    register_resolvers()
    if not OmegaConf.has_resolver("help_groups"):
        OmegaConf.register_new_resolver("help_groups", help_groups)


register()
