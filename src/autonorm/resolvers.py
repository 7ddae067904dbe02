"""OmegaConf resolvers used by the configs; registered on import (``train.py`` imports this first)."""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

_MAX_SLUG = 120


def run_slug(override_dirname: str) -> str:
    """A folder name for a run from its command-line overrides.

    ``norm=afn,gate=gumbel`` -> ``norm=afn,gate=gumbel``; no overrides -> ``default``; path
    separators become ``_`` and over-long names are cut and suffixed with a short hash, so the
    same command always maps to the same folder.
    """
    if not override_dirname:
        return "default"
    slug = re.sub(r"[^A-Za-z0-9=,._+\-]", "_", override_dirname)
    if len(slug) > _MAX_SLUG:
        digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:10]
        slug = f"{slug[: _MAX_SLUG - 11]}-{digest}"
    return slug


def help_groups(*groups: str) -> str:
    """``group: option, option`` lines for ``--help`` (only the groups a command uses)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return "\n".join(f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in groups)


def register() -> None:
    if not OmegaConf.has_resolver("run_slug"):
        OmegaConf.register_new_resolver("run_slug", run_slug)
    if not OmegaConf.has_resolver("help_groups"):
        OmegaConf.register_new_resolver("help_groups", help_groups)


register()
