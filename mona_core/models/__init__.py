"""Networks: the paper's 2D UNet behind a tiny registry."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mona_core.models.heads import (
    HeadsConfig,
    LocalProjectionHead,
    MonaHeads,
    PixelSample,
    Predictor,
    ProjectionHead,
    RepresentationHead,
    build_heads,
    random_local_views,
    sample_pixels,
)
from mona_core.models.unet import UNet, UNetConfig, UNetOutput, count_parameters

_REGISTRY: dict[str, Callable[[UNetConfig], nn.Module]] = {"unet": UNet}


def build_model(config: UNetConfig) -> UNet:
    """Build the network named by ``config.name``."""
    if config.name not in _REGISTRY:
        raise ValueError(f"expected a model name in {sorted(_REGISTRY)}, got {config.name!r}")
    model = _REGISTRY[config.name](config)
    assert isinstance(model, UNet)
    return model


__all__ = [
    "HeadsConfig",
    "LocalProjectionHead",
    "MonaHeads",
    "PixelSample",
    "Predictor",
    "ProjectionHead",
    "RepresentationHead",
    "UNet",
    "UNetConfig",
    "UNetOutput",
    "build_heads",
    "build_model",
    "count_parameters",
    "random_local_views",
    "sample_pixels",
]
