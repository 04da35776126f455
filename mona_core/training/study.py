"""The label-efficiency study: labelled ratios × methods on one dataset under one declared budget → a Table-I-style
report (DSC / ASD per class and their means, per method and ratio) as JSON, markdown and a plot.

Every cell trains with the same ``TrainConfig`` except its method and labelled patients (chosen by patient, seeded)
and is scored on whole volumes with DSC and ASD, each figure labelled with its checkpoint and split (``scores``):
``best_val`` — the best-on-validation checkpoint, selected AND scored on the validation split (optimistic);
``last_val`` — the last checkpoint on the validation split (no selection); ``best_test`` — the best-on-validation
checkpoint on the dataset's labelled ``test`` split, when it has one (the honest figure: chosen on val, scored on
unseen patients). One training seed (``base.seed``) per cell. ``per_class`` / ``mean`` repeat ``best_val``. Cells
live in ``out_dir/<method>-<ratio>``; re-running a study resumes unfinished cells and reuses finished ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mona_core.data.dataset import DatasetIndex
from mona_core.data.splits import select_labelled
from mona_core.models import UNetConfig, build_model
from mona_core.report.figures import save_study_png
from mona_core.training.checkpoint import BEST, LAST, load_checkpoint
from mona_core.training.config import StudyConfig, TrainConfig
from mona_core.training.progress import ProgressEvent, ProgressFn, StopFn, ignore_progress, never_stop
from mona_core.training.slices import load_val_cases
from mona_core.training.trainer import resolve_device, train
from mona_core.training.validation import validate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyCell:
    method: str
    ratio: float
    labelled_patients: tuple[str, ...]
    best: dict[str, Any] | None
    per_class: dict[str, dict[str, float | None]]
    mean: dict[str, float | None]
    train_seconds: float
    scores: dict[str, dict[str, Any]]


def run_study(
    study: StudyConfig,
    index: DatasetIndex,
    out_dir: str | Path,
    progress: ProgressFn = ignore_progress,
    should_stop: StopFn = never_stop,
) -> dict[str, Any] | None:
    """Run every cell (ratios outer, methods inner); returns the report, or None when stopped."""
    out_dir = Path(out_dir)
    cells: list[StudyCell] = []
    grid = [(ratio, method) for ratio in study.ratios for method in study.methods]
    for number, (ratio, method) in enumerate(grid):
        cell = _run_cell(study, index, out_dir, ratio, method, _cell_progress(progress, number, len(grid), study.base))
        if cell is None or should_stop():
            return None
        cells.append(cell)
    return write_report(study, index, cells, out_dir)


def _run_cell(
    study: StudyConfig, index: DatasetIndex, out_dir: Path, ratio: float, method: str, progress: ProgressFn
) -> StudyCell | None:
    selection = select_labelled(
        index.patients("train"), ratio=ratio, seed=study.split_seed, eligible=index.fully_labelled_patients("train")
    )
    config = replace(study.base, method=method)
    run_dir = out_dir / f"{method}-{ratio:g}"
    started = time.monotonic()
    result = train(config, index, selection, run_dir, progress=progress)
    if result.stopped:
        return None
    scores = score_run(run_dir, index, config)
    best = scores["best_val"]
    seconds = round(time.monotonic() - started, 1)
    return StudyCell(method, ratio, selection.labelled, result.best, best["per_class"], best["mean"], seconds, scores)


# (name, checkpoint file, split): what each score in a cell is, spelled out in the report.
SCORES = (("best_val", BEST, "val"), ("last_val", LAST, "val"), ("best_test", BEST, "test"))


def score_run(run_dir: Path, index: DatasetIndex, config: TrainConfig) -> dict[str, dict[str, Any]]:
    """DSC and ASD of the best-on-validation and the last checkpoint, labelled with checkpoint and split; the test
    split is scored (best-on-validation checkpoint only) when the dataset has labelled test volumes."""
    device = resolve_device(config.device)
    test = load_val_cases(index, split="test") if "test" in index.splits else []
    cases = {"val": load_val_cases(index), "test": test}
    scores: dict[str, dict[str, Any]] = {}
    for name, checkpoint, split in SCORES:
        path = run_dir / "checkpoints" / checkpoint
        if not cases[split] or not path.is_file():
            continue
        saved = load_checkpoint(path)
        model = build_model(UNetConfig.from_dict(saved["model_config"])).to(device)
        model.load_state_dict(saved["model"])
        report = validate(model, cases[split], index.classes, index.preset, config.size, device, with_asd=True)
        scores[name] = {"checkpoint": checkpoint, "step": saved["step"], "split": split, **report}
    return scores


def _cell_progress(progress: ProgressFn, number: int, cells: int, base: TrainConfig) -> ProgressFn:
    """A cell's events on the study's scale: step counts every cell's iterations, the stage names the cell."""

    def report(event: ProgressEvent) -> None:
        total = cells * base.iterations
        step = number * base.iterations + round(event.fraction * base.iterations)
        progress(replace(event, stage=f"study {number + 1}/{cells}: {event.stage}", step=step, total=total))

    return report


def write_report(study: StudyConfig, index: DatasetIndex, cells: Sequence[StudyCell], out_dir: Path) -> dict[str, Any]:
    """``study.json``, ``study.md`` and ``study.png`` in ``out_dir``; returns the JSON report."""
    markdown = study_markdown(cells, index.classes[1:])
    report: dict[str, Any] = {
        "dataset": index.name,
        "study": study.to_dict(),
        "unit": "DSC as a fraction 0-1 (study.md and study.png show %), ASD in mm (from the NIfTI spacing; voxels "
        "where the headers say 1 x 1 x 1, as in ACDC)",
        "cells": [asdict(cell) for cell in cells],
        "markdown": markdown,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.json").write_text(json.dumps(report, indent=2))
    (out_dir / "study.md").write_text(markdown)
    save_study_png([asdict(cell) for cell in cells], out_dir / "study.png", title=f"Label efficiency on {index.name}")
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


STUDY_CAPTION = (
    "One training seed per cell. Per class and mean: best-on-validation checkpoint, selected and scored on the "
    "validation split (optimistic). last (val): the last checkpoint on the validation split. test: the "
    "best-on-validation checkpoint on the test split (n/a: the dataset has no labelled test volumes)."
)


def _mean_cell(cell: StudyCell, score: str) -> str:
    found = cell.scores.get(score)
    return "n/a" if found is None else f"{_pct(found['mean']['dice'])} / {_num(found['mean']['asd'])}"


def study_markdown(cells: Sequence[StudyCell], classes: Sequence[str]) -> str:
    """A caption, then one row per (ratio, method): DSC / ASD per foreground class and the means for each score."""
    head = "| labelled | method | " + " | ".join(f"{c} DSC / ASD" for c in classes)
    head += " | mean DSC / ASD | last (val) mean | test mean |"
    rows = [STUDY_CAPTION, "", head, "|---|---|" + "---|" * (len(classes) + 3)]
    for cell in cells:
        per = [f"{_pct(cell.per_class[c]['dice'])} / {_num(cell.per_class[c]['asd'])}" for c in classes]
        means = [_mean_cell(cell, score) for score in ("best_val", "last_val", "best_test")]
        patients = len(cell.labelled_patients)
        rows.append(f"| {cell.ratio:g} ({patients} pt) | {cell.method} | " + " | ".join(per + means) + " |")
    return "\n".join(rows) + "\n"
