"""Per-class 3D Dice (DSC) and average symmetric surface distance (ASD), with explicit empty cases.

The numbers come from medpy (``medpy.metric.binary.dc`` and ``assd``); this module only decides which cases
they are computed on and how they are averaged, because the libraries disagree on empty masks (MONAI returns
inf / NaN, medpy raises) and a silent 0 or 1 would distort the mean.

Status of one foreground class in one case:

- ``ok``: the class is in both the prediction and the label; DSC and ASD from medpy.
- ``both_empty``: in neither; nothing to measure, DSC and ASD are ``None``.
- ``prediction_empty``: in the label only (a missed class); DSC 0.0, ASD ``None`` (undefined).
- ``label_empty``: in the prediction only (a hallucinated class); DSC 0.0, ASD ``None`` (undefined).

Aggregation rule (also ``RULE_TEXT``, written into every aggregate so a report carries it): per class, DSC
is averaged over the cases where the class is in the label or in the prediction (both-empty cases are
excluded; a missed or hallucinated class counts 0); ASD is averaged over the cases with status ok only; the
final figure is the unweighted mean over foreground classes of those per-class means. Counts per status are
reported so exclusions are visible.

Spacing: arrays are numpy ``(z, y, x)``, so ``spacing_zyx`` is in numpy axis order, the *reverse* of
SimpleITK's ``Geometry.spacing`` ``(x, y, z)``; use ``spacing_zyx_from_xyz``. ASD is then in mm (from the
NIfTI spacing; on ACDC, whose files say 1 x 1 x 1, this equals voxels). Without spacing, ASD is in voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from medpy.metric.binary import assd, dc

logger = logging.getLogger(__name__)

RULE_TEXT = (
    "Per class, DSC is averaged over the cases where the class is in the label or in the prediction "
    "(both-empty cases are excluded; a missed or hallucinated class counts 0); ASD is averaged over the "
    "cases with status ok only; the final figure is the unweighted mean over foreground classes of those "
    "per-class means. Counts per status are reported so exclusions are visible."
)


class Status(StrEnum):
    """Which of the prediction and the label contain a class in one case."""

    OK = "ok"
    BOTH_EMPTY = "both_empty"
    PRED_EMPTY = "prediction_empty"
    LABEL_EMPTY = "label_empty"


@dataclass(frozen=True)
class ClassMetrics:
    """DSC and ASD of one foreground class in one case; ``None`` where the status makes a value moot."""

    dice: float | None
    asd: float | None
    status: Status

    def to_dict(self) -> dict[str, Any]:
        return {"dice": self.dice, "asd": self.asd, "status": self.status.value}


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one case: foreground class name -> ``ClassMetrics`` (background is never measured)."""

    case_id: str
    classes: dict[str, ClassMetrics]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"case_id": ..., "classes": {name: {"dice", "asd", "status"}}}``."""
        return {"case_id": self.case_id, "classes": {name: m.to_dict() for name, m in self.classes.items()}}


def spacing_zyx_from_xyz(spacing_xyz: Sequence[float]) -> tuple[float, ...]:
    """Reverse a SimpleITK ``(x, y, z)`` spacing into the numpy ``(z, y, x)`` order the metrics expect."""
    return tuple(float(s) for s in reversed(spacing_xyz))


def asd_unit(spacing_xyz: Sequence[float] | None) -> str:
    """Unit of ASD for a volume: "mm" when a spacing is used, "voxels" without one.

    "mm" comes from the NIfTI spacing; on ACDC, whose files say 1 x 1 x 1, this equals voxels. Callers that
    know better (e.g. that the header spacing is a placeholder) pass their own unit to
    ``MetricAccumulator``.
    """
    return "voxels" if spacing_xyz is None else "mm"


def _check_inputs(
    pred: np.ndarray, label: np.ndarray, class_names: Sequence[str], spacing: Sequence[float] | None
) -> None:
    """Reject inputs that would give silently wrong numbers (shape, dtype, spacing, class list)."""
    if pred.shape != label.shape:
        raise ValueError(f"expected prediction and label of the same shape, got {pred.shape} and {label.shape}")
    for name, arr in (("prediction", pred), ("label", label)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"expected an integer class-index {name} array, got dtype {arr.dtype}")
    if len(class_names) < 2:
        raise ValueError(f"expected background plus at least one class name, got {list(class_names)}")
    if spacing is not None:
        if len(spacing) != pred.ndim:
            raise ValueError(f"expected {pred.ndim} spacing values (numpy axis order), got {len(spacing)}")
        if not all(float(s) > 0 for s in spacing):
            raise ValueError(f"expected positive spacing, got {tuple(spacing)}")


def crop_to_union(first: np.ndarray, second: np.ndarray, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus ``margin`` voxels. DSC and ASD are unchanged: every
    foreground voxel stays, the surfaces stay surfaces (no mask touches the cut's edge) and distances are measured
    in space, not along the array; the distance transforms just run on far fewer voxels."""
    union = np.logical_or(first, second)
    box = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=others))
        box.append(slice(max(0, int(present[0]) - margin), int(present[-1]) + margin + 1))
    return first[tuple(box)], second[tuple(box)]


def _class_metrics(
    pred_mask: np.ndarray, label_mask: np.ndarray, spacing: tuple[float, ...] | None, with_asd: bool
) -> ClassMetrics:
    """Metrics of one binary class mask pair, with the status rule of the module docstring."""
    in_pred = bool(pred_mask.any())
    in_label = bool(label_mask.any())
    if in_pred and in_label:
        pred_mask, label_mask = crop_to_union(pred_mask, label_mask)
        dice = float(dc(pred_mask, label_mask))
        distance = float(assd(pred_mask, label_mask, voxelspacing=spacing)) if with_asd else None
        return ClassMetrics(dice=dice, asd=distance, status=Status.OK)
    if in_label:
        return ClassMetrics(dice=0.0, asd=None, status=Status.PRED_EMPTY)
    if in_pred:
        return ClassMetrics(dice=0.0, asd=None, status=Status.LABEL_EMPTY)
    return ClassMetrics(dice=None, asd=None, status=Status.BOTH_EMPTY)


def evaluate_case(
    pred: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    spacing_zyx: Sequence[float] | None = None,
    case_id: str = "case",
    with_asd: bool = True,
) -> CaseMetrics:
    """DSC and ASD per foreground class of one volume.

    ``pred`` and ``label`` are class-index arrays of the same shape (``(z, y, x)`` for a volume); class
    ``i`` is named ``class_names[i]`` and ``class_names[0]`` (background) is skipped. ``spacing_zyx`` is in
    numpy axis order (reverse of SimpleITK's); ``None`` measures ASD in voxels. ``with_asd=False`` skips the
    surface distances (the costly part) and leaves ``asd`` None: validation during training needs only DSC.
    """
    _check_inputs(pred, label, class_names, spacing_zyx)
    spacing = None if spacing_zyx is None else tuple(float(s) for s in spacing_zyx)
    classes = {
        name: _class_metrics(pred == index, label == index, spacing, with_asd)
        for index, name in enumerate(class_names)
        if index > 0
    }
    return CaseMetrics(case_id=case_id, classes=classes)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


class MetricAccumulator:
    """Collect ``CaseMetrics`` one case at a time, then ``aggregate`` with ``RULE_TEXT`` (MONAI-style)."""

    def __init__(self, class_names: Sequence[str], unit: str = "mm") -> None:
        if len(class_names) < 2:
            raise ValueError(f"expected background plus at least one class name, got {list(class_names)}")
        self.foreground = tuple(class_names[1:])
        self.unit = unit
        self._cases: list[CaseMetrics] = []

    def __len__(self) -> int:
        return len(self._cases)

    def add(self, case: CaseMetrics) -> None:
        """Record one case; its classes must be exactly this accumulator's foreground classes."""
        if tuple(case.classes) != self.foreground:
            raise ValueError(f"expected classes {list(self.foreground)}, got {list(case.classes)}")
        self._cases.append(case)

    def reset(self) -> None:
        """Forget every case added so far."""
        self._cases.clear()

    def _per_class(self, name: str) -> dict[str, Any]:
        """Per-class means under the rule: DSC over non-both-empty cases, ASD over ok cases only."""
        metrics = [case.classes[name] for case in self._cases]
        dices = [m.dice for m in metrics if m.status is not Status.BOTH_EMPTY and m.dice is not None]
        asds = [m.asd for m in metrics if m.status is Status.OK and m.asd is not None]
        counts = {status.value: sum(m.status is status for m in metrics) for status in Status}
        return {
            "dice": _mean_or_none(dices),
            "asd": _mean_or_none(asds),
            "n_dice": len(dices),
            "n_asd": len(asds),
            "status_counts": counts,
        }

    def aggregate(self) -> dict[str, Any]:
        """JSON-ready summary: unit, rule, every case, per-class means with counts, mean over classes."""
        per_class = {name: self._per_class(name) for name in self.foreground}
        class_dice = [v["dice"] for v in per_class.values() if v["dice"] is not None]
        class_asd = [v["asd"] for v in per_class.values() if v["asd"] is not None]
        return {
            "unit": self.unit,
            "rule": RULE_TEXT,
            "cases": [case.to_dict() for case in self._cases],
            "per_class": per_class,
            "mean": {"dice": _mean_or_none(class_dice), "asd": _mean_or_none(class_asd)},
        }


def evaluate_volumes(
    pred: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    spacing_zyx: Sequence[float] | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """One case through an accumulator; returns its ``aggregate()``.

    ``unit`` defaults to "mm" with a spacing and "voxels" without one.
    """
    accumulator = MetricAccumulator(class_names, unit=unit or ("voxels" if spacing_zyx is None else "mm"))
    accumulator.add(evaluate_case(pred, label, class_names, spacing_zyx))
    return accumulator.aggregate()
