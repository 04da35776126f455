"""Learning-rate schedule as a pure function of the step (paper: lr / 10 every 2,500 iterations)."""

from __future__ import annotations


def step_decay_lr(step: int, base_lr: float, step_size: int, gamma: float) -> float:
    """``base_lr * gamma ** (step // step_size)``; ``step`` counts iterations already done (0-based)."""
    if step < 0 or step_size <= 0:
        raise ValueError(f"expected step >= 0 and step_size > 0, got step={step}, step_size={step_size}")
    return base_lr * gamma ** (step // step_size)
