import math

import pytest
import torch

from mona_core.losses import relation_kl_loss


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(target: list[float], model: list[float]) -> float:
    return sum(t * (math.log(t) - math.log(m)) for t, m in zip(target, model, strict=True))


def test_hand_computed_two_vectors_two_bank_entries() -> None:
    # Inputs are not unit length on purpose: the loss normalises them. After normalisation:
    # student u = (1, 0), (0, 1); teacher v' = (1, 0), (0.6, 0.8); bank w = (1, 0), (0, 1).
    student = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    tau_s, tau_t = 1.0, 0.5
    p_student = [_softmax([1.0 / tau_s, 0.0]), _softmax([0.0, 1.0 / tau_s])]
    p_teacher = [_softmax([1.0 / tau_t, 0.0]), _softmax([0.6 / tau_t, 0.8 / tau_t])]
    expected = (_kl(p_teacher[0], p_student[0]) + _kl(p_teacher[1], p_student[1])) / 2
    loss = relation_kl_loss(student, teacher, bank, tau_student=tau_s, tau_teacher=tau_t)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_zero_when_relations_and_temperatures_are_equal() -> None:
    query = torch.randn(4, 8)
    bank = torch.randn(6, 8)
    loss = relation_kl_loss(query, query.clone(), bank, tau_student=0.2, tau_teacher=0.2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_default_temperatures_make_a_sharper_teacher() -> None:
    query = torch.randn(4, 8)
    bank = torch.randn(6, 8)
    assert relation_kl_loss(query, query.clone(), bank).item() > 0.0


def test_gradient_reaches_only_the_student() -> None:
    student = torch.randn(3, 8, requires_grad=True)
    teacher = torch.randn(3, 8, requires_grad=True)
    bank = torch.randn(5, 8, requires_grad=True)
    relation_kl_loss(student, teacher, bank).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert bank.grad is None


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="expected"):
        relation_kl_loss(torch.randn(2, 4), torch.randn(2, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="expected a non-empty bank"):
        relation_kl_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(0, 4))
