"""Unsupervised losses on unlabelled images: teacher pseudo-label CE (the paper's L_unsup) and two baselines' losses
(Mean Teacher's softmax MSE, cross pseudo supervision)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"expected two logits of the same shape (B, C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def pseudo_label_ce_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    confidence_threshold: float | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_unsup: cross-entropy of the student against the teacher's argmax, averaged over the kept pixels.

    ``student_logits``, ``teacher_logits``: (B, C, H, W); the teacher is detached. A pixel is kept when its teacher
    max-probability is >= ``confidence_threshold`` (when given) and ``valid`` (optional (B, 1, H, W) mask) is set.
    No kept pixel gives a zero that backpropagates.
    """
    _check_pair(student_logits, teacher_logits)
    confidence, pseudo = torch.softmax(teacher_logits.detach(), dim=1).max(dim=1)
    ce = F.cross_entropy(student_logits, pseudo, reduction="none")
    keep = torch.ones_like(ce)
    if confidence_threshold is not None:
        keep = keep * (confidence >= confidence_threshold).to(ce.dtype)
    if valid is not None:
        if tuple(valid.shape) != (ce.shape[0], 1, *ce.shape[1:]):
            raise ValueError(
                f"expected a valid mask of shape {(ce.shape[0], 1, *ce.shape[1:])}, got {tuple(valid.shape)}"
            )
        keep = keep * valid[:, 0].to(ce.dtype)
    return (ce * keep).sum() / keep.sum().clamp_min(1.0)


def softmax_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher consistency: mean over (B, C, H, W) of (softmax(student) - softmax(teacher))^2; teacher detached."""
    _check_pair(student_logits, teacher_logits)
    diff = torch.softmax(student_logits, dim=1) - torch.softmax(teacher_logits.detach(), dim=1)
    return diff.pow(2).mean()


def cross_pseudo_supervision_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """CPS: CE(a, argmax b) + CE(b, argmax a), each pixel-averaged; (B, C, H, W) logits; argmaxes detached."""
    _check_pair(logits_a, logits_b)
    pseudo_a = logits_a.detach().argmax(dim=1)
    pseudo_b = logits_b.detach().argmax(dim=1)
    return F.cross_entropy(logits_a, pseudo_b) + F.cross_entropy(logits_b, pseudo_a)
