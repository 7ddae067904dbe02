"""The one config loader: Hydra's compose API over the package's config tree (``autonorm.CONF_DIR``).

Everything that needs a config outside ``train.py`` / ``eval.py`` (the phases' pretraining and
teacher configs, ``eval.py``'s data set, the benchmark, the tests) composes it here, so group
options are read with their ``defaults:`` lists exactly as a run reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import hydra
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobRuntime
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from autonorm import CONF_DIR, resolvers
from autonorm.config import ConfigError

VERSION_BASE = "1.3"


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", return_hydra_config: bool = False, config_dir: Path = CONF_DIR
) -> DictConfig:
    """The config ``config_name`` (``train`` or ``eval``) composed with ``overrides``, as
    ``python train.py <overrides>`` would see it (from ``config_dir``, the package's config tree
    unless told). Works inside a running Hydra app too (its global state is set aside and restored)."""
    resolvers.register()  # ${run_name:} and the others, for whoever resolves the result
    gh = GlobalHydra.instance()
    running = gh.hydra if gh.is_initialized() else None
    job_name = JobRuntime.instance().get("name")  # a running job's name, which initialising would overwrite
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), job_name=job_name, version_base=VERSION_BASE):
            return hydra.compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def load_group(group: str, option: str) -> DictConfig:
    """One option of a config group, e.g. ``load_group("data", "mnist")``: the ``group`` node of
    the train config composed with ``group=option`` (this machine's ``local`` settings left out),
    detached, its interpolations (``${paths.data_root}``, ``${seed}``) left for the config it joins."""
    try:
        cfg = compose([f"{group}={option}", "~local"])
    except MissingConfigException:
        choices = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        raise ConfigError(f"{group}={option} is not a known option; choose one of {', '.join(choices)}") from None
    return OmegaConf.create(OmegaConf.to_container(cfg[group], resolve=False))  # type: ignore[return-value]
