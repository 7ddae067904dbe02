"""OmegaConf resolvers used by the configs; registered on import (``train.py`` imports this first).

``${run_name:}`` names a run folder after the run's identity and ``${launch_stamp:}`` names a
sweep folder uniquely per launch (both in :mod:`autonorm.pipeline.identity`).
"""

from __future__ import annotations

from autonorm.pipeline.identity import register_resolvers

register_resolvers()
