"""``TrainConfig`` / ``StudyConfig`` bounds: every numeric field has an upper bound, every float is finite."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import pytest

from mona_core.training.config import LIMITS, STUDY_MAX_ITERATIONS, StudyConfig, TrainConfig

FRACTIONS: tuple[str, ...] = ("ema_decay", "rampup_fraction", "hard_threshold", "pretrain_fraction")
FRACTIONS += ("bcp_pretrain_fraction", "bcp_mask_ratio")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iterations": 3_000_000_000}, "expected iterations <= 1000000, got 3000000000"),
        ({"size": 99984}, "expected size <= 1024, got 99984"),
        ({"batch_size": 10_000_000}, "expected batch_size <= 512, got 10000000"),
        ({"lr": float("inf")}, "expected lr a finite number, got inf"),
        ({"lr": float("nan")}, "expected lr a finite number, got nan"),
        ({"lr": 10.5}, "expected lr <= 10, got 10.5"),
        ({"seed": 2**70}, f"expected seed <= {2**32 - 1}, got {2**70}"),
        ({"seed": -1}, "expected seed >= 0, got -1"),
        ({"weight_decay": float("inf")}, "expected weight_decay a finite number, got inf"),
        ({"consistency_weight": float("inf")}, "expected consistency_weight a finite number"),
        ({"iterations": 0}, "expected iterations > 0, got 0"),
    ],
)
def test_out_of_range_fields_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        TrainConfig(**change)


def test_every_numeric_field_has_an_upper_bound_and_the_bounds_are_accepted() -> None:
    numeric = {f.name for f in fields(TrainConfig) if str(f.type).removesuffix(" | None") in ("int", "float")}
    assert set(LIMITS) <= numeric
    assert numeric - set(LIMITS) == set(FRACTIONS)  # bounded on both sides by their own checks
    for name in FRACTIONS:
        with pytest.raises(ValueError, match=f"^expected {name} "):
            TrainConfig.from_dict({name: float("inf")})
    TrainConfig(lr=10.0, iterations=1_000_000, seed=2**32 - 1, size=1024, batch_size=512, lr_gamma=1.0)


def test_a_study_bounds_its_total_cells_and_split_seed() -> None:
    base = TrainConfig(iterations=1_000_000)
    StudyConfig(methods=("supervised",), ratios=(0.5,), base=base, split_seed=2**32 - 1)
    with pytest.raises(ValueError, match=f"expected total_iterations .* <= {STUDY_MAX_ITERATIONS}, got 15000000"):
        StudyConfig(ratios=(0.1, 0.2, 0.3, 0.4, 0.5), base=base)
    with pytest.raises(ValueError, match="expected at most 64 study cells"):
        StudyConfig(ratios=tuple(i / 100 for i in range(1, 101)), base=TrainConfig(iterations=10))
    with pytest.raises(ValueError, match=re.escape("expected split_seed in 0..4294967295, got 4294967296")):
        StudyConfig(split_seed=2**32)
