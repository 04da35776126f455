"""Choosing patients: the train / val split and the labelled subset of the training patients.

Semi-supervised results are reported at label ratios counted in training patients (ACDC: 1 % -> 1 patient,
5 % -> 3, 10 % -> 7 of 70). Choosing whole patients keeps both frames of a patient on the same side, and a
seeded draw makes every run's labelled set reproducible and recordable (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mona_core.data.dataset import CaseRecord

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class LabelledSelection:
    """Which training patients are labelled, which are not, and how that choice was asked for."""

    labelled: tuple[str, ...]
    unlabelled: tuple[str, ...]
    seed: int
    request: dict[str, float | int | None] = field(default_factory=lambda: {"patients": None, "ratio": None})

    def to_dict(self) -> dict[str, object]:
        return {
            "labelled": list(self.labelled),
            "unlabelled": list(self.unlabelled),
            "seed": self.seed,
            "request": dict(self.request),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LabelledSelection:
        """Rebuild a selection written by ``to_dict`` (e.g. from a run's record)."""
        labelled, unlabelled = data.get("labelled"), data.get("unlabelled")
        seed, request = data.get("seed"), data.get("request", {})
        if not isinstance(labelled, list) or not isinstance(unlabelled, list):
            raise ValueError(f"expected 'labelled' and 'unlabelled' lists, got {type(labelled).__name__}")
        if not isinstance(seed, int) or not isinstance(request, dict):
            raise ValueError(f"expected an integer 'seed' and a 'request' object, got {seed!r} and {request!r}")
        return cls(
            labelled=tuple(sorted(str(p) for p in labelled)),
            unlabelled=tuple(sorted(str(p) for p in unlabelled)),
            seed=seed,
            request={"patients": request.get("patients"), "ratio": request.get("ratio")},
        )


def patients_for_ratio(n_patients: int, ratio: float) -> int:
    """How many of ``n_patients`` a label ratio means: ``floor(ratio * n)``, at least 1 and at most ``n``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"expected a label ratio in (0, 1], got {ratio}")
    if n_patients < 1:
        raise ValueError(f"expected at least 1 training patient, got {n_patients}")
    return min(n_patients, max(1, math.floor(ratio * n_patients + 1e-9)))


def select_labelled(
    train_patients: Sequence[str],
    *,
    n_patients: int | None = None,
    ratio: float | None = None,
    seed: int = 0,
    eligible: Sequence[str] | None = None,
) -> LabelledSelection:
    """Choose the labelled patients among the training patients.

    Give at most one of ``n_patients`` and ``ratio``; with neither every eligible patient is labelled (fully
    supervised). ``ratio`` counts over all training patients; only ``eligible`` patients (those labelled in
    every case; default all) can be chosen. The draw is ``numpy.random.default_rng(seed).permutation`` over
    the sorted eligible patients.
    """
    train = sorted(set(train_patients))
    pool = sorted(set(eligible)) if eligible is not None else train
    outside = sorted(set(pool) - set(train))
    if outside:
        raise ValueError(f"expected eligible patients among the training patients, got {outside[:5]}")
    wanted = _wanted_count(len(train), len(pool), n_patients, ratio)
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = sorted(pool[int(i)] for i in order[:wanted])
    return LabelledSelection(
        labelled=tuple(chosen),
        unlabelled=tuple(sorted(set(train) - set(chosen))),
        seed=seed,
        request={"patients": n_patients, "ratio": ratio},
    )


def _wanted_count(n_train: int, n_eligible: int, n_patients: int | None, ratio: float | None) -> int:
    if n_patients is not None and ratio is not None:
        raise ValueError(f"expected one of n_patients or ratio, got both ({n_patients}, {ratio})")
    if n_patients is None and ratio is None:
        wanted = n_eligible
    elif ratio is not None:
        wanted = patients_for_ratio(n_train, ratio)
    else:
        wanted = int(n_patients) if n_patients is not None else 0
    if wanted < 1:
        raise ValueError(f"expected at least 1 labelled patient, got {wanted}")
    if wanted > n_eligible:
        raise ValueError(
            f"expected at most {n_eligible} eligible (fully labelled) patients, got a request for {wanted}"
        )
    return wanted


def partition_cases(
    cases: Iterable[CaseRecord], selection: LabelledSelection
) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """Split training cases into (labelled, unlabelled) by the selection's patients.

    A case of an unlabelled patient is unlabelled even when a label file exists; cases of patients outside the
    selection are left out.
    """
    records = list(cases)
    labelled_patients, unlabelled_patients = set(selection.labelled), set(selection.unlabelled)
    labelled = [c for c in records if c.patient_id in labelled_patients and c.labelled]
    unlabelled = [c for c in records if c.patient_id in unlabelled_patients]
    return labelled, unlabelled


def fully_labelled_patients(cases: Iterable[CaseRecord]) -> list[str]:
    """Sorted patient ids all of whose cases (among ``cases``) carry a label."""
    patients: dict[str, bool] = {}
    for record in cases:
        patients[record.patient_id] = patients.get(record.patient_id, True) and record.labelled
    return sorted(patient for patient, complete in patients.items() if complete)


def split_by_patient(
    cases: Sequence[CaseRecord], fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> dict[str, tuple[str, ...]]:
    """A deterministic train / val split by patient.

    ``max(1, round(fraction * n))`` of the ``n`` fully labelled patients go to val, drawn with
    ``numpy.random.default_rng(seed)``; every other case (unlabelled ones included) is train. With fewer than
    two fully labelled patients val is empty and a warning is logged.
    """
    eligible = fully_labelled_patients(cases)
    val_patients: set[str] = set()
    if len(eligible) < 2:
        logger.warning("only %d fully labelled patient(s): the validation split is empty", len(eligible))
    else:
        n_val = max(1, round(fraction * len(eligible)))
        order = np.random.default_rng(seed).permutation(len(eligible))
        val_patients = {eligible[int(i)] for i in order[:n_val]}
    return {
        "train": tuple(r.case_id for r in cases if r.patient_id not in val_patients),
        "val": tuple(r.case_id for r in cases if r.patient_id in val_patients),
    }
