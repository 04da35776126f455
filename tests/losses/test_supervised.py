import math

import pytest
import torch

from mona_core.losses import soft_dice_loss, supervised_loss


def test_soft_dice_hand_computed() -> None:
    # Two classes, two pixels, uniform logits -> p = 0.5 everywhere; target all background.
    # background: Dice = 2 * (0.5 + 0.5) / ((0.25 + 0.25) + 2) = 0.8; foreground: 0 / (0.5 + 0) -> Dice ~ 0.
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    assert soft_dice_loss(logits, target).item() == pytest.approx(((1 - 0.8) + 1.0) / 2, abs=1e-4)


def test_supervised_loss_is_half_ce_plus_dice() -> None:
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    parts = supervised_loss(logits, target)
    assert parts["loss_ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert parts["loss"].item() == pytest.approx(0.5 * (math.log(2) + 0.6), abs=1e-4)


def test_perfect_prediction_has_near_zero_loss() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50.0
    assert supervised_loss(logits, target)["loss"].item() < 1e-3


def test_gradients_flow_to_logits() -> None:
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8))
    supervised_loss(logits, target)["loss"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
