"""Errors of a training run that callers (the CLI, the worker) report as a failed run, not a crash."""

from __future__ import annotations


class TrainingDiverged(ValueError):
    """Training diverged: a non-finite or exploding loss, or non-finite weights. The run has no usable model.

    ``step`` is the 1-based step that showed it (the step number of the logged metrics), ``what`` the loss part
    (``loss_ce``) or the weights that went wrong, ``value`` the offending value and ``lr`` the learning rate used.
    """

    def __init__(self, step: int, what: str, value: float, lr: float, detail: str = "") -> None:
        suffix = f" {detail}" if detail else ""
        super().__init__(f"training diverged at step {step}: {what} = {value:g}{suffix} (lr {lr:g})")
        self.step, self.what, self.value, self.lr = step, what, value, lr
