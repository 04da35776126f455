"""Per-pixel-weighted Dice + CE: the loss of a copy-paste mixed image (BCP), whose pixels are not equally trusted."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def weighted_dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5
) -> dict[str, torch.Tensor]:
    """(CE_w + Dice_w) / 2 with a weight per pixel; returns ``{"loss", "loss_ce", "loss_dice"}``.

    ``logits``: (N, C, H, W); ``target``: (N, H, W) integer labels in ``0..C-1``; ``weight``: (N, H, W), >= 0.
    CE_w = sum(w * CE) / sum(w): a weighted mean, so a pixel of weight 0.5 counts half as much as one of weight 1.
    Dice_w: per class c (background included), (2 sum(w p y) + eps) / (sum(w p^2) + sum(w y) + eps), pooled over the
    batch like ``soft_dice_loss``, and 1 - Dice_w averaged over classes. Both are weighted averages, so scaling every
    weight by the same factor changes nothing and ``weight == 1`` everywhere is exactly ``supervised_loss``: the
    weights say how much a pixel is trusted relative to the others (BCP: pseudo-labelled pixels get α = 0.5).
    """
    if weight.shape != target.shape:
        raise ValueError(f"expected a weight per pixel of shape {tuple(target.shape)}, got {tuple(weight.shape)}")
    weight = weight.to(logits.dtype)
    ce = (F.cross_entropy(logits, target.long(), reduction="none") * weight).sum() / weight.sum().clamp_min(eps)
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    w, dims = weight[:, None], (0, 2, 3)
    intersection = (w * probs * one_hot).sum(dims)
    denominator = (w * probs.pow(2)).sum(dims) + (w * one_hot).sum(dims)
    dice = 1.0 - ((2.0 * intersection + eps) / (denominator + eps)).mean()
    return {"loss": 0.5 * (ce + dice), "loss_ce": ce, "loss_dice": dice}
