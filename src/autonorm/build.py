"""Build the model from its config groups (``model`` and ``norm``) with Hydra's ``instantiate``.

The norm config is a ``_partial_`` target, so ``instantiate`` returns the ``norm_layer(dim)``
factory that :class:`~autonorm.models.VisionTransformer` calls at each norm point. Keys that are
bookkeeping rather than constructor arguments (``name``) are dropped here, in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

_META_KEYS = ("name",)


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def build_norm_layer(norm_cfg: Mapping[str, Any] | DictConfig) -> Callable[[int], nn.Module]:
    """``norm`` config -> ``norm_layer(dim)`` factory."""
    cfg = {k: v for k, v in _plain(norm_cfg).items() if k not in _META_KEYS}
    cfg["_partial_"] = True
    return instantiate(cfg)


def build_model(
    model_cfg: Mapping[str, Any] | DictConfig,
    norm_cfg: Mapping[str, Any] | DictConfig,
    num_classes: int,
) -> nn.Module:
    """``model`` + ``norm`` configs -> a ViT with the chosen norm at every norm point."""
    cfg = {k: v for k, v in _plain(model_cfg).items() if k not in _META_KEYS}
    return instantiate(cfg, num_classes=num_classes, norm_layer=build_norm_layer(norm_cfg))
