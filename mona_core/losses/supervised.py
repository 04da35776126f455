"""Supervised segmentation loss: soft Dice + cross-entropy with equal weight (the paper's L_sup)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over all classes (background included) of ``1 - Dice(softmax(logits), one_hot(target))``.

    ``logits``: (N, C, H, W); ``target``: (N, H, W) integer labels in ``0..C-1``. Each class's Dice pools every pixel
    of the batch; ``eps`` keeps an absent class (0/0) at a loss of 0 rather than NaN.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.pow(2).sum(dims) + one_hot.sum(dims)
    dice = (2.0 * intersection + eps) / (denominator + eps)
    return (1.0 - dice).mean()


def supervised_loss(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """L_sup = (CE + Dice) / 2; returns ``{"loss", "loss_ce", "loss_dice"}`` (the parts for logging)."""
    ce = F.cross_entropy(logits, target.long())
    dice = soft_dice_loss(logits, target)
    return {"loss": 0.5 * (ce + dice), "loss_ce": ce, "loss_dice": dice}
