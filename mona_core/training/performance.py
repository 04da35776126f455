"""Speed knobs of a training run, driven by ``TrainConfig``: memory format, mixed precision, fused SGD, threads.

Every knob defaults to off, so a default run computes exactly what it always did; each one only changes how fast a
step runs (and, for ``amp``, the precision of the forward pass), never what is trained or saved:

- ``channels_last``: every module of the method and every batch's images in ``torch.channels_last``; convolutions
  then pick NHWC kernels (faster on recent GPUs and with oneDNN on CPUs). Parameters keep their values and dtype,
  checkpoints load into ordinary (contiguous) networks, so validation and export are unaffected.
- ``amp="bf16"``: ``torch.autocast`` with bfloat16 on the run's device around the method's loss step only. The
  parameters stay float32 (autocast casts copies), the returned losses are cast back to float32, and backward, the
  optimiser step and EMA updates run outside autocast, so gradients and weights stay float32. bfloat16 keeps
  float32's exponent range, so no gradient scaler is needed.
- ``fused_optimizer``: ``SGD(fused=True)`` (one kernel for all parameters) where torch supports it for the
  parameters' device; elsewhere a note is logged and the ordinary SGD is used.
- ``threads``: ``torch.set_num_threads`` for the process (intra-op CPU threads), when set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import torch
from torch import nn

from mona_core.training.config import TrainConfig
from mona_core.training.methods import Batch, Method

logger = logging.getLogger(__name__)


def apply_threads(config: TrainConfig) -> None:
    """Set torch's intra-op thread count when ``config.threads`` is given (process-wide: torch has one pool)."""
    if config.threads is not None and torch.get_num_threads() != config.threads:
        torch.set_num_threads(config.threads)
        logger.info("torch intra-op threads set to %d", config.threads)


def apply_memory_format(method: Method, config: TrainConfig) -> None:
    """Move every module of ``method`` (students, teachers, heads) to channels_last when the knob is on.

    ``Module.to(memory_format=...)`` restrides the 4-d parameters and buffers; run it before the optimiser is built
    on ``method.trainable()`` so nothing holds the old layout. Loading a checkpoint afterwards copies into these
    tensors and keeps their layout.
    """
    if not config.channels_last:
        return
    for module in method.modules().values():
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from the stubs


def prepare_batch(batch: Batch, config: TrainConfig) -> Batch:
    """The batch with its images (labelled and unlabelled) in channels_last when the knob is on; labels unchanged."""
    if not config.channels_last:
        return batch
    images = batch.images.contiguous(memory_format=torch.channels_last)
    return Batch(images, batch.labels, batch.unlabelled.contiguous(memory_format=torch.channels_last))


def build_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.SGD:
    """The run's SGD (lr, momentum, weight decay from ``config``), fused when asked and supported."""
    params = list(params)
    if config.fused_optimizer:
        try:
            return _sgd(params, config, fused=True)
        except (RuntimeError, ValueError) as exc:
            device = params[0].device if params else "no parameters"
            logger.warning("fused SGD unsupported on %s (%s); using the ordinary SGD", device, exc)
    return _sgd(params, config, fused=None)


def _sgd(params: list[nn.Parameter], config: TrainConfig, fused: bool | None) -> torch.optim.SGD:
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=fused
    )


def step_autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The context of the loss step: bfloat16 autocast on ``device`` for ``amp="bf16"``, else nothing."""
    if config.amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def method_step(
    method: Method, batch: Batch, step: int, config: TrainConfig, device: torch.device
) -> dict[str, torch.Tensor]:
    """``method.step(batch, step)`` under the run's autocast, with the loss parts returned in float32.

    Casting the parts back (a no-op for float32 tensors) makes backward start from a float32 loss and keeps the
    logged values comparable across ``amp`` settings.
    """
    with step_autocast(config, device):
        parts = method.step(prepare_batch(batch, config), step)
    return {name: value.float() for name, value in parts.items()}
