"""What a training method is: networks, one loss step on a batch, and a hook after the optimiser step.

The loop (``mona_core.training.trainer``) is shared: sampling, learning-rate schedule, validation, model selection,
checkpoints and progress are the same for every method, so methods compare under one budget.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from mona_core.models import UNet
from mona_core.training.config import TrainConfig

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Batch:
    """Labelled images (L, 1, S, S) with labels (L, S, S) int64, and unlabelled images (U, 1, S, S); U may be 0."""

    images: torch.Tensor
    labels: torch.Tensor
    unlabelled: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(self.images.to(device), self.labels.to(device), self.unlabelled.to(device))

    @property
    def all_images(self) -> torch.Tensor:
        return torch.cat([self.images, self.unlabelled]) if len(self.unlabelled) else self.images


class Method(Protocol):
    """A training method. ``modules`` are saved in checkpoints; ``eval_model`` is validated and exported.

    ``extra_state`` is everything else a resumed run needs to continue exactly as an uninterrupted one (the method's
    own random generator, memory banks). ``augments_unlabelled``: the method makes its own weak view of unlabelled
    slices on the device, so the sampler must not augment them first (one weak augmentation, not two).
    """

    name: str
    augments_unlabelled: bool

    def modules(self) -> dict[str, nn.Module]: ...

    def trainable(self) -> list[nn.Parameter]: ...

    def eval_model(self) -> UNet: ...

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]: ...

    def after_step(self, step: int) -> None: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, for parameters; buffers (BN statistics) are copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t_buffer, s_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
        t_buffer.copy_(s_buffer)


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2) with t = step / length clipped to [0, 1]: the usual ramp-up of consistency weights."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def stage_rampup(config: TrainConfig, step: int) -> float:
    """r(t) of the unsupervised terms: the sigmoid ramp over the first ``rampup_fraction`` of the stage's iterations."""
    return sigmoid_rampup(step, round(config.rampup_fraction * config.iterations))


def frozen_copy(module: ModuleT) -> ModuleT:
    """A teacher: same architecture, weights and device as ``module``, with no gradients, in eval mode.

    Eval mode makes a teacher's output a function of its input alone: no dropout, and BatchNorm with the running
    statistics (copied from the student by ``ema_update``) rather than those of the batch companions. The trainer
    keeps it so (``set_train_modes``).
    """
    teacher = copy.deepcopy(module)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def is_frozen(module: nn.Module) -> bool:
    """A module none of whose parameters train (a teacher); a module without parameters counts as trainable."""
    parameters = list(module.parameters())
    return bool(parameters) and not any(p.requires_grad for p in parameters)


def set_train_modes(modules: dict[str, nn.Module]) -> None:
    """Students train (dropout, batch statistics); frozen teachers stay in eval mode."""
    for module in modules.values():
        module.train(not is_frozen(module))


def load_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restore ``generator.get_state()`` (a CPU byte tensor, also for a CUDA generator) from a checkpoint."""
    generator.set_state(state.to(device="cpu", dtype=torch.uint8))
