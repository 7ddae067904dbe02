"""Models. ``VisionTransformer`` takes its norm as an injected ``norm_layer(dim)`` callable."""

from autonorm.models.vit import VisionTransformer

__all__ = ["VisionTransformer"]
