"""GLCon instance discrimination (paper eq. 1-2): match the student's relation to the mined views to the teacher's."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _check_embeddings(student_query: torch.Tensor, teacher_query: torch.Tensor, bank: torch.Tensor) -> None:
    if student_query.ndim != 2 or student_query.shape != teacher_query.shape:
        raise ValueError(
            f"expected student and teacher queries of the same shape (B, D), got {tuple(student_query.shape)} "
            f"and {tuple(teacher_query.shape)}"
        )
    if bank.ndim != 2 or bank.shape[1] != student_query.shape[1] or bank.shape[0] == 0:
        raise ValueError(f"expected a non-empty bank (K, {student_query.shape[1]}), got {tuple(bank.shape)}")


def relation_kl_loss(
    student_query: torch.Tensor,
    teacher_query: torch.Tensor,
    bank: torch.Tensor,
    tau_student: float = 0.1,
    tau_teacher: float = 0.01,
) -> torch.Tensor:
    """L_inst of eq. 2: KL divergence between the teacher's and the student's relation distributions (eq. 1).

    ``student_query``: (B, D) the student's predicted embedding u = h'(h(E(x))); ``teacher_query``: (B, D) the
    teacher's embedding v' of the other augmented view; ``bank``: (K, D) the teacher's embeddings w of the K mined
    views. All three are L2-normalised here, so the similarities are cosines. The teacher side (``teacher_query`` and
    ``bank``) is detached: only the student receives a gradient.

    Direction: the paper writes KL(s_theta || s_xi); we implement KL(p_xi || p_theta) =
    sum_j p_xi,j (log p_xi,j - log p_theta,j), the teacher's distribution being the target, as in ISD on which GLCon
    is built. With a detached teacher this is the cross-entropy from the sharp teacher (tau_xi = 0.01) to the student,
    which makes the student cover every mined view the teacher relates to instead of collapsing onto one.
    Averaged over the batch (``batchmean``); returns a scalar.
    """
    _check_embeddings(student_query, teacher_query, bank)
    student = F.normalize(student_query, dim=1)
    teacher = F.normalize(teacher_query.detach(), dim=1)
    mined = F.normalize(bank.detach(), dim=1)
    log_p_student = F.log_softmax(student @ mined.T / tau_student, dim=1)
    log_p_teacher = F.log_softmax(teacher @ mined.T / tau_teacher, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
