import pytest
import torch

from mona_core.losses import nearest_neighbour_loss

BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_hand_computed_two_nearest_of_three() -> None:
    # Teacher (1, 0.1): nearest two are (1, 0) and (0, 1). Student (3, 4) -> (0.6, 0.8): cosines 0.6 and 0.8.
    loss = nearest_neighbour_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.1]]), BANK, k=2)
    assert loss.item() == pytest.approx(-0.7, abs=1e-6)


def test_neighbours_are_picked_by_the_teacher_not_the_student() -> None:
    # The student sits on (0, 1), but the teacher's nearest entry is (1, 0): cos((0, 1), (1, 0)) = 0.
    loss = nearest_neighbour_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), BANK, k=1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_k_larger_than_the_bank_uses_the_whole_bank() -> None:
    loss = nearest_neighbour_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.1]]), BANK, k=10)
    assert loss.item() == pytest.approx(-(0.6 + 0.8 - 0.6) / 3, abs=1e-6)


def test_the_student_gets_a_gradient_and_the_teacher_none() -> None:
    # The public reference code measures the distance on the frozen teacher: no gradient, nothing trained.
    student = torch.randn(4, 8, requires_grad=True)
    teacher = torch.randn(4, 8, requires_grad=True)
    loss = nearest_neighbour_loss(student, teacher, torch.randn(6, 8))
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_empty_bank_gives_zero_with_a_gradient() -> None:
    student = torch.randn(2, 3, requires_grad=True)
    loss = nearest_neighbour_loss(student, torch.randn(2, 3), torch.zeros(0, 3))
    loss.backward()
    assert loss.item() == 0.0 and student.grad is not None


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="expected student and teacher"):
        nearest_neighbour_loss(torch.randn(2, 3), torch.randn(3, 3), BANK)
    with pytest.raises(ValueError, match="expected a bank"):
        nearest_neighbour_loss(torch.randn(2, 3), torch.randn(2, 3), BANK)
