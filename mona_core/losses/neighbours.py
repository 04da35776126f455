"""Diversity: the nearest-neighbour loss L_nn, pulling the student's embedding to the teacher's K nearest neighbours."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def nearest_neighbour_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, bank: torch.Tensor, k: int = 5
) -> torch.Tensor:
    """L_nn (Section III-B, "Diversity"): mean over rows and neighbours of -cos(u, n), n among the K nearest neighbours.

    ``student_embedding``: (B, D) the student's u_g; ``teacher_embedding``: (B, D) the teacher's v'_g; ``bank``:
    (K_bank, D) the FIFO memory of past teacher embeddings (query it before pushing the batch). All are L2-normalised.
    The neighbours are picked by cosine similarity to the detached teacher embedding (a selection, not differentiable);
    the distance is measured on the STUDENT embedding, which gets the gradient. The public reference code measures it on
    the frozen teacher, so its loss trains nothing. ``k`` larger than the bank uses the whole bank; an empty bank
    gives a zero that backpropagates. Returns a scalar in [-1, 1].
    """
    if student_embedding.ndim != 2 or student_embedding.shape != teacher_embedding.shape:
        raise ValueError(
            f"expected student and teacher embeddings of the same shape (B, D), got "
            f"{tuple(student_embedding.shape)} and {tuple(teacher_embedding.shape)}"
        )
    if bank.ndim != 2 or bank.shape[1] != student_embedding.shape[1]:
        raise ValueError(f"expected a bank of shape (K, {student_embedding.shape[1]}), got {tuple(bank.shape)}")
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k}")
    if bank.shape[0] == 0:
        return student_embedding.sum() * 0.0
    student = F.normalize(student_embedding, dim=1)
    stored = F.normalize(bank.detach(), dim=1).to(student)
    teacher = F.normalize(teacher_embedding.detach(), dim=1).to(student)
    nearest = (teacher @ stored.T).topk(min(k, stored.shape[0]), dim=1).indices
    return -(student[:, None, :] * stored[nearest]).sum(dim=2).mean()
