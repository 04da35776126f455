import math

import pytest
import torch

from mona_core.losses import cross_pseudo_supervision_loss, pseudo_label_ce_loss, softmax_mse_loss

LN3 = math.log(3.0)


def _pixels(*logits: tuple[float, float]) -> torch.Tensor:
    """(1, 2, 1, P) logits from one (class 0, class 1) pair per pixel."""
    return torch.tensor(logits).T.reshape(1, 2, 1, len(logits))


def test_pseudo_label_ce_hand_computed() -> None:
    # Student p = (1/4, 3/4) at both pixels; teacher labels 0 then 1 -> CE = log 4 and log 4/3.
    student = _pixels((0.0, LN3), (0.0, LN3))
    teacher = _pixels((2.0, 0.0), (0.0, 0.5))
    expected = (math.log(4.0) + math.log(4.0 / 3.0)) / 2
    assert pseudo_label_ce_loss(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_pseudo_label_ce_confidence_and_valid_masks() -> None:
    # Teacher confidences: e^2 / (e^2 + 1) = 0.88 and e^0.5 / (e^0.5 + 1) = 0.62.
    student = _pixels((0.0, LN3), (0.0, LN3))
    teacher = _pixels((2.0, 0.0), (0.0, 0.5))
    assert pseudo_label_ce_loss(student, teacher, 0.8).item() == pytest.approx(math.log(4.0), abs=1e-6)
    valid = torch.tensor([False, True]).view(1, 1, 1, 2)
    assert pseudo_label_ce_loss(student, teacher, valid=valid).item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_pseudo_label_ce_nothing_kept_is_zero_with_a_gradient() -> None:
    student = _pixels((0.0, LN3), (0.0, LN3)).requires_grad_()
    loss = pseudo_label_ce_loss(student, _pixels((2.0, 0.0), (0.0, 0.5)), confidence_threshold=0.99)
    loss.backward()
    assert loss.item() == 0.0 and student.grad is not None


def test_pseudo_label_ce_teacher_is_detached() -> None:
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    pseudo_label_ce_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_softmax_mse_hand_computed_and_detached() -> None:
    # (1/2, 1/2) vs (3/4, 1/4): every squared difference is 1/16.
    student = _pixels((0.0, 0.0)).requires_grad_()
    teacher = _pixels((LN3, 0.0)).requires_grad_()
    loss = softmax_mse_loss(student, teacher)
    assert loss.item() == pytest.approx(1 / 16, abs=1e-6)
    loss.backward()
    assert student.grad is not None and teacher.grad is None


def test_cross_pseudo_supervision_hand_computed() -> None:
    # a = (1/4, 3/4) -> label 1; b = (3/4, 1/4) -> label 0. CE(a, 0) = CE(b, 1) = log 4.
    a = _pixels((0.0, LN3)).requires_grad_()
    b = _pixels((LN3, 0.0)).requires_grad_()
    loss = cross_pseudo_supervision_loss(a, b)
    assert loss.item() == pytest.approx(2 * math.log(4.0), abs=1e-6)
    loss.backward()
    assert a.grad is not None and b.grad is not None


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="expected two logits"):
        softmax_mse_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="expected a valid mask"):
        pseudo_label_ce_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), valid=torch.ones(1, 3, 3))
