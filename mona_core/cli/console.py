"""Terminal output for the CLI: a training progress bar and a readable metrics table."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from tqdm import tqdm

from mona_core.training.progress import ProgressEvent


def emit(text: str) -> None:
    """One line of user-facing output on stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class TrainingBar:
    """A tqdm bar fed by ``ProgressEvent``s: iteration, loss, lr, val DSC and ETA."""

    def __init__(self, total: int, desc: str = "train") -> None:
        self._bar = tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, file=sys.stderr)

    def update(self, event: ProgressEvent) -> None:
        self._bar.total = event.total
        self._bar.n = event.step
        postfix: dict[str, str] = {
            "loss": f"{event.losses.get('loss', float('nan')):.3f}",
            "lr": f"{event.lr:.1e}",
        }
        if event.best_val_dice is not None:
            postfix["best_val_dsc"] = f"{event.best_val_dice:.3f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def __enter__(self) -> TrainingBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._bar.close()


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """A per-class table of DSC and ASD with status counts, then the means and the unit."""
    lines = [f"{'class':<14}{'DSC':>8}{'ASD':>10}  statuses"]
    for name, row in report["per_class"].items():
        counts = ", ".join(f"{k} {v}" for k, v in row["status_counts"].items() if v)
        lines.append(f"{name:<14}{_fmt(row['dice']):>8}{_fmt(row['asd']):>10}  {counts}")
    mean = report["mean"]
    lines.append(f"{'mean':<14}{_fmt(mean['dice']):>8}{_fmt(mean['asd']):>10}")
    lines.append(f"ASD unit: {report['unit']}; {len(report['cases'])} case(s)")
    return "\n".join(lines) + "\n"
