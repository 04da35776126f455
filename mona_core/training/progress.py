"""Progress events: what a training run tells the CLI progress bar and, later, the worker writing to the database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One report from a running job. ``eta_s`` is None until a step has been timed."""

    stage: str
    step: int
    total: int
    losses: dict[str, float]
    lr: float
    val_dice: float | None
    best_val_dice: float | None
    elapsed_s: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction}


ProgressFn = Callable[[ProgressEvent], None]
StopFn = Callable[[], bool]
"""Checked every step; returning True stops the run cooperatively after saving a checkpoint."""


def never_stop() -> bool:
    return False


def ignore_progress(event: ProgressEvent) -> None:
    del event
