"""Divergence guards of the training step: a run whose loss or weights blow up stops with ``TrainingDiverged``.

Without them a diverged run "succeeds": its losses are logged as null, validation scores 0 and an all-NaN network
passes an export that compares NaN with NaN. The loss check is free (the step already reads each loss part back as
a Python float); the weight check reads every parameter and buffer, so it runs only on the steps that validate or
write a checkpoint (and the last), which is where non-finite weights would otherwise be kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from mona_core.training.config import TrainConfig
from mona_core.training.errors import TrainingDiverged


def check_losses(losses: Mapping[str, float], step: int, lr: float, max_loss: float) -> None:
    """Raise ``TrainingDiverged`` when a loss part is non-finite or above ``max_loss``.

    The parts (``loss_ce``, ``loss_dice`` ...) are checked before the total ``loss`` so that the message names the
    term that blew up.
    """
    for name in sorted(losses, key=lambda part: part == "loss"):
        value = losses[name]
        if not math.isfinite(value):
            raise TrainingDiverged(step, name, value, lr)
        if value > max_loss:
            raise TrainingDiverged(step, name, value, lr, f"> max_loss {max_loss:g}")


def weights_due(step: int, config: TrainConfig) -> bool:
    """Whether step ``step`` (1-based) validates, writes a checkpoint or is the last: then weights are checked."""
    every = (config.checkpoint_every, config.val_every)
    return step == config.iterations or any(step % interval == 0 for interval in every)


def check_weights(modules: Mapping[str, torch.nn.Module], step: int, lr: float) -> None:
    """Raise ``TrainingDiverged`` when a floating-point parameter or buffer of ``modules`` holds NaN or infinity."""
    for module_name, module in modules.items():
        tensors = [*module.named_parameters(), *module.named_buffers()]
        floating = [(name, tensor.detach()) for name, tensor in tensors if tensor.is_floating_point()]
        if not floating:
            continue
        finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in floating])
        if bool(finite.all()):
            continue
        name, tensor = floating[int((~finite).nonzero()[0])]
        bad = float(tensor[~torch.isfinite(tensor)].flatten()[0])
        raise TrainingDiverged(step, f"weights of {module_name} ({name})", bad, lr, "(non-finite after the step)")
