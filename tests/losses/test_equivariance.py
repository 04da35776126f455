import math

import pytest
import torch

from mona_core.losses import equivariance_loss


def test_zero_for_equal_inputs() -> None:
    logits = torch.randn(2, 4, 5, 5)
    assert equivariance_loss(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_two_classes_one_pixel() -> None:
    # p_a = (1/2, 1/2), p_b = (3/4, 1/4):
    # KL(a||b) + KL(b||a) = sum (p_a - p_b)(log p_a - log p_b) = 1/4 log(3/2) + 1/4 log 2 = 1/4 log 3.
    a = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1)
    b = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    assert equivariance_loss(a, b).item() == pytest.approx(0.25 * math.log(3.0), abs=1e-6)


def test_symmetric() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert equivariance_loss(a, b).item() == pytest.approx(equivariance_loss(b, a).item(), abs=1e-6)


def test_masked_pixels_are_ignored() -> None:
    a = torch.tensor([[0.0, 5.0], [0.0, -5.0]]).view(1, 2, 1, 2)
    b = torch.tensor([[math.log(3.0), -5.0], [0.0, 5.0]]).view(1, 2, 1, 2)
    valid = torch.tensor([True, False]).view(1, 1, 1, 2)
    assert equivariance_loss(a, b, valid).item() == pytest.approx(0.25 * math.log(3.0), abs=1e-6)


def test_no_valid_pixel_gives_zero_with_a_gradient() -> None:
    a = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss = equivariance_loss(a, torch.randn(1, 2, 2, 2), torch.zeros(1, 1, 2, 2))
    loss.backward()
    assert loss.item() == 0.0 and a.grad is not None


def test_gradients_reach_both_arguments() -> None:
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, requires_grad=True)
    equivariance_loss(a, b).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="expected two logits"):
        equivariance_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="expected a valid mask"):
        equivariance_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.ones(1, 3, 3))
