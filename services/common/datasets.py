"""A stored dataset as the ML library sees it: ``mona_core``'s ``DatasetIndex`` built from the database rows.

Case files live in the artifact store under content-hash keys; the index points at them directly, so nothing is
copied. Splits come from each case's ``split`` column. When no case was uploaded as ``val``, a deterministic
patient-level validation split is drawn from the fully labelled ``train`` patients (``split_by_patient``, the
same rule as for a dataset folder without ``splits.json``); with fewer than two such patients ``val`` is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from mona_core.data.dataset import CaseRecord, DatasetIndex
from mona_core.data.splits import split_by_patient
from services.common.models import Case, Dataset
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)


class DatasetNotFound(LookupError):
    """No dataset row has the id."""


def dataset_index(session: Session, store: ArtifactStore, dataset_id: str) -> DatasetIndex:
    """The index of dataset ``dataset_id``: its cases (store paths), splits, classes and preset."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise DatasetNotFound(f"expected an existing dataset id, got {dataset_id!r}")
    rows = session.scalars(select(Case).where(Case.dataset_id == dataset_id).order_by(Case.case_id)).all()
    records = tuple(_record(row, store) for row in rows)
    return DatasetIndex(
        root=store.root,
        name=dataset.name,
        classes=tuple(str(name) for name in dataset.classes),
        preset=dataset.preset,
        cases=records,
        splits=case_splits(rows, records),
    )


def _record(row: Case, store: ArtifactStore) -> CaseRecord:
    label = store.path(row.label_key) if row.label_key else None
    return CaseRecord(case_id=row.case_id, patient_id=row.patient_id, image=store.path(row.image_key), label=label)


def case_splits(rows: Sequence[Case], records: Sequence[CaseRecord]) -> dict[str, tuple[str, ...]]:
    """Split name -> case ids from the rows; ``train`` and ``val`` always present, ``val`` derived if none."""
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for row in rows:
        splits.setdefault(row.split, []).append(row.case_id)
    result = {name: tuple(ids) for name, ids in splits.items()}
    if result["val"]:
        return result
    train_ids = set(result["train"])
    derived = split_by_patient([record for record in records if record.case_id in train_ids])
    logger.info("no uploaded val cases: derived a val split of %d case(s)", len(derived["val"]))
    return {**result, "train": derived["train"], "val": derived["val"]}
