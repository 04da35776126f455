"""Training configuration: one dataclass, paper defaults (Section IV-B), saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

METHODS = ("supervised", "mean_teacher", "cps")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Defaults are the paper's: SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 6, lr / 10 every 2,500
    iterations, 256x256 slices, EMA momentum 0.99. ``iterations`` defaults to 30,000 (the SSL4MIS-family schedule).

    Semi-supervised methods split each batch into ``labelled_batch_size`` labelled slices (default: half) and the
    rest unlabelled; the supervised method uses labelled slices only. Consistency weights (Mean Teacher, CPS)
    ramp up with a sigmoid over the first ``rampup_fraction`` of the iterations.
    """

    method: str = "supervised"
    iterations: int = 30_000
    batch_size: int = 6
    size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 2_500
    lr_gamma: float = 0.1
    val_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    labelled_batch_size: int | None = None
    ema_decay: float = 0.99
    consistency_weight: float = 0.1
    rampup_fraction: float = 0.4

    def __post_init__(self) -> None:
        checks = {
            "method": (self.method in METHODS, f"one of {METHODS}"),
            "device": (self.device in DEVICES, f"one of {DEVICES}"),
            "iterations": (self.iterations > 0, "> 0"),
            "batch_size": (self.batch_size > 0, "> 0"),
            "size": (self.size >= 16 and self.size % 16 == 0, "a multiple of 16, at least 16"),
            "lr": (self.lr > 0, "> 0"),
            "lr_step": (self.lr_step > 0, "> 0"),
            "val_every": (self.val_every > 0, "> 0"),
            "checkpoint_every": (self.checkpoint_every > 0, "> 0"),
            "log_every": (self.log_every > 0, "> 0"),
            "labelled_batch_size": (
                self.labelled_batch_size is None or 0 < self.labelled_batch_size <= self.batch_size,
                f"None or in 1..batch_size ({self.batch_size})",
            ),
            "ema_decay": (0.0 <= self.ema_decay < 1.0, "in [0, 1)"),
            "consistency_weight": (self.consistency_weight >= 0.0, ">= 0"),
            "rampup_fraction": (0.0 <= self.rampup_fraction <= 1.0, "in [0, 1]"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"expected {name} {expected}, got {getattr(self, name)!r}")

    @property
    def labelled_per_batch(self) -> int:
        """Labelled slices per batch: all of it for the supervised method, else ``labelled_batch_size`` or half."""
        if self.method == "supervised":
            return self.batch_size
        return self.labelled_batch_size or max(1, self.batch_size // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"expected training options among {sorted(known)}, got unknown {unknown}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})
