"""Training methods behind a tiny registry: ``build_method(config, model_config, device)``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mona_core.models import UNetConfig
from mona_core.training.config import TrainConfig
from mona_core.training.methods.base import Batch, Method, ema_update, sigmoid_rampup
from mona_core.training.methods.baselines import CrossPseudoSupervision, MeanTeacher, Supervised
from mona_core.training.methods.bcp import BidirectionalCopyPaste
from mona_core.training.methods.mona import AnatomicalContrastiveReconstruction, GLCon

_REGISTRY: dict[str, Callable[[TrainConfig, UNetConfig, torch.device], Method]] = {
    "supervised": Supervised,
    "mean_teacher": MeanTeacher,
    "cps": CrossPseudoSupervision,
    "bcp": BidirectionalCopyPaste,
    "pretrain": GLCon,
    "finetune": AnatomicalContrastiveReconstruction,
}


def build_method(config: TrainConfig, model_config: UNetConfig, device: torch.device) -> Method:
    """The method of one training stage (``mona`` is two stages, chained by the trainer, not a method)."""
    if config.method not in _REGISTRY:
        raise ValueError(f"expected a method in {sorted(_REGISTRY)}, got {config.method!r}")
    return _REGISTRY[config.method](config, model_config, device)


__all__ = ["Batch", "Method", "build_method", "ema_update", "sigmoid_rampup"]
