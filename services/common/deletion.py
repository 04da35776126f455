"""Deleting what users uploaded or made: datasets, cases, jobs, models, reports and segmentations.

Each ``delete_*`` removes rows in the caller's transaction and returns a ``Removal``: the content-addressed objects
that those rows referenced and the folders they owned. ``apply_removal`` runs after the commit (a failed commit
leaves no row without its file) and unlinks only the objects that no remaining row references: an image shared by
two datasets stays while one of them holds it. An object written in the last ``grace_s`` seconds is left alone (an
upload may be about to reference it; ``ArtifactStore.put`` refreshes a duplicate's time) and is collected later by
the workers' orphan sweep (``sweep_orphans``), which also catches what a crash between commit and unlink left.

Work in progress blocks a deletion (``InUse``, 409 in the API): a queued or running job on a dataset, a queued or
running evaluation of a model or on a dataset. A deleted dataset keeps a tombstone row (no name, no cases) so that
the jobs and models trained on it keep their provenance; every lookup treats it as gone.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from services.common.models import (
    Case,
    Dataset,
    JobStatus,
    Model,
    Report,
    ReportEntry,
    Segmentation,
    TrainingJob,
    utcnow,
)
from services.common.storage import ArtifactStore

UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
DELETED_NAME = "(deleted)"
KEY_COLUMNS: tuple[InstrumentedAttribute[str] | InstrumentedAttribute[str | None], ...] = (
    Case.image_key,
    Case.label_key,
    Model.onnx_key,
    Model.manifest_key,
    Segmentation.mask_key,
    Segmentation.overlay_key,
    Segmentation.viewer_image_key,
    Segmentation.viewer_label_key,
)
"""Columns holding object keys; report overlays and study figures hold theirs inside JSON."""


class InUse(Exception):
    """Work in progress still uses what was to be deleted."""


@dataclass
class Removal:
    """What to remove from the store once the rows are gone: candidate object keys and owned folders."""

    objects: set[str] = field(default_factory=set)
    folders: list[Path] = field(default_factory=list)

    def add(self, other: Removal) -> Removal:
        self.objects |= other.objects
        self.folders += other.folders
        return self


def _keys(*values: str | None) -> set[str]:
    return {value for value in values if value}


def _report_keys(report: Report) -> set[str]:
    return {value for value in (report.overlays or {}).values() if isinstance(value, str)}


def _study_keys(job: TrainingJob) -> set[str]:
    figure = (job.result or {}).get("figure_key") if job.kind == "study" else None
    return _keys(figure if isinstance(figure, str) else None)


def _refuse_if_busy(
    session: Session, what: str, jobs: ColumnElement[bool] | None, reports: ColumnElement[bool]
) -> None:
    """``InUse`` when queued or running jobs (matching ``jobs``) or reports (matching ``reports``) exist."""
    busy = list(session.scalars(select(Report.id).where(Report.status.in_(UNFINISHED), reports)))
    if jobs is not None:
        busy += list(session.scalars(select(TrainingJob.id).where(TrainingJob.status.in_(UNFINISHED), jobs)))
    if busy:
        shown = ", ".join(busy[:5])
        raise InUse(f"expected no queued or running work on {what}, got {len(busy)} ({shown}); cancel or wait")


def delete_cases(session: Session, cases: Iterable[Case]) -> Removal:
    removal = Removal()
    ids = []
    for case in cases:
        removal.objects |= _keys(case.image_key, case.label_key)
        ids.append(case.id)
    if ids:
        session.execute(delete(Case).where(Case.id.in_(ids)))
    return removal


def delete_case(session: Session, dataset: Dataset, case: Case) -> Removal:
    """One case of ``dataset``; refused while a job trains on the dataset."""
    _refuse_if_busy(
        session, f"dataset {dataset.id}", TrainingJob.dataset_id == dataset.id, Report.dataset_id == dataset.id
    )
    return delete_cases(session, [case])


def delete_dataset(session: Session, dataset: Dataset) -> Removal:
    """Every case of ``dataset`` (rows and, where unshared, files); the row stays as a nameless tombstone."""
    _refuse_if_busy(
        session, f"dataset {dataset.id}", TrainingJob.dataset_id == dataset.id, Report.dataset_id == dataset.id
    )
    removal = delete_cases(session, session.scalars(select(Case).where(Case.dataset_id == dataset.id)))
    dataset.name, dataset.deleted_at = DELETED_NAME, utcnow()
    return removal


def delete_reports(session: Session, reports: Iterable[Report]) -> Removal:
    removal = Removal()
    ids = []
    for report in reports:
        removal.objects |= _report_keys(report)
        ids.append(report.id)
    if ids:
        batch_rows = session.scalars(select(Segmentation).where(Segmentation.batch_id.in_(ids)))
        removal.add(delete_segmentations(session, list(batch_rows)))
        session.execute(update(Segmentation).where(Segmentation.report_id.in_(ids)).values(report_id=None))
        session.execute(delete(ReportEntry).where(ReportEntry.report_id.in_(ids)))
        session.execute(delete(Report).where(Report.id.in_(ids)))
    return removal


def delete_report(session: Session, report: Report) -> Removal:
    """A finished report with its entries and overlays (a segmentation that pointed at it keeps its mask)."""
    if report.status in UNFINISHED:
        raise InUse(f"expected a finished report, got a {report.status} one ({report.id}); wait for it to finish")
    return delete_reports(session, [report])


def delete_segmentations(session: Session, segmentations: Iterable[Segmentation]) -> Removal:
    removal = Removal()
    rows = list(segmentations)
    for row in rows:
        removal.objects |= _keys(row.mask_key, row.overlay_key, row.viewer_image_key, row.viewer_label_key)
    report_ids = {row.report_id for row in rows if row.report_id}
    if rows:
        session.execute(delete(Segmentation).where(Segmentation.id.in_([row.id for row in rows])))
    if report_ids:
        own = select(Report).where(Report.id.in_(report_ids), Report.source == "segmentation")
        removal.add(delete_reports(session, list(session.scalars(own))))
    return removal


def delete_segmentation(session: Session, segmentation: Segmentation) -> Removal:
    """A segmentation: its mask, its overlay and the report made with its label."""
    return delete_segmentations(session, [segmentation])


def delete_model(session: Session, store: ArtifactStore, model: Model) -> Removal:
    """A model with its files, its segmentations (masks) and its reports; refused while an evaluation of it runs."""
    _refuse_if_busy(session, f"model {model.id}", None, Report.model_id == model.id)
    segmentations = session.scalars(select(Segmentation).where(Segmentation.model_id == model.id))
    removal = delete_segmentations(session, list(segmentations))
    removal.add(delete_reports(session, session.scalars(select(Report).where(Report.model_id == model.id))))
    removal.objects |= _keys(model.onnx_key, model.manifest_key)
    removal.folders.append(store.root / "models" / model.id)
    session.execute(update(TrainingJob).where(TrainingJob.model_id == model.id).values(model_id=None))
    session.delete(model)
    return removal


def delete_job(session: Session, store: ArtifactStore, job: TrainingJob) -> Removal:
    """A finished job: its row, metrics, logs, run folder (checkpoints) and study figure. A job whose model still
    exists is refused: delete the model first (it is the job's product, and may be in use)."""
    if job.status in UNFINISHED:
        raise InUse(f"expected a finished job, got a {job.status} one ({job.id}); cancel it first")
    model = session.scalar(select(Model.id).where(Model.job_id == job.id))
    if model is not None:
        raise InUse(f"expected a job without a model, got job {job.id} with model {model}; delete the model first")
    removal = Removal(objects=_study_keys(job), folders=[store.run_dir(job.id)])
    session.delete(job)
    return removal


def referenced(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` that some row still references."""
    wanted = set(keys)
    found: set[str] = set()
    for column in KEY_COLUMNS:
        if wanted - found:
            found |= {key for key in session.scalars(select(column).where(column.in_(wanted - found))) if key}
    if wanted - found:
        found |= wanted & all_json_keys(session)
    return found


def all_json_keys(session: Session) -> set[str]:
    """Object keys held inside JSON: report overlays and study figures."""
    keys: set[str] = set()
    for overlays in session.scalars(select(Report.overlays).where(Report.overlays.is_not(None))):
        keys |= {value for value in (overlays or {}).values() if isinstance(value, str)}
    studies = select(TrainingJob).where(TrainingJob.kind == "study", TrainingJob.result.is_not(None))
    for job in session.scalars(studies):
        keys |= _study_keys(job)
    return keys


def all_referenced(session: Session) -> set[str]:
    keys: set[str] = set()
    for column in KEY_COLUMNS:
        keys |= {key for key in session.scalars(select(column).where(column.is_not(None))) if key}
    return keys | all_json_keys(session)


@dataclass(frozen=True)
class Removed:
    objects: int = 0
    folders: int = 0
    bytes_freed: int = 0


def unreferenced_objects(session: Session, removal: Removal) -> set[str]:
    """The candidate objects of ``removal`` that no row references any more (call in the deleting transaction,
    after the deletes, so that its own rows no longer count)."""
    session.flush()
    return removal.objects - referenced(session, removal.objects)


def apply_removal(store: ArtifactStore, objects: Iterable[str], folders: Iterable[Path], grace_s: float) -> Removed:
    """Unlink ``objects`` (unless written in the last ``grace_s`` seconds) and remove ``folders``; after commit."""
    cutoff = time.time() - grace_s
    count, freed, removed_folders = 0, 0, 0
    for key in sorted(objects):
        path = store.path(key)
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mtime > cutoff:
            continue
        path.unlink(missing_ok=True)
        count, freed = count + 1, freed + info.st_size
    for folder in folders:
        if folder.is_dir():
            freed += sum(item.stat().st_size for item in folder.rglob("*") if item.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            removed_folders += 1
    return Removed(count, removed_folders, freed)


def sweep_orphans(session: Session, store: ArtifactStore, grace_s: float) -> Removed:
    """Remove every stored object that no row references and that is older than ``grace_s`` seconds."""
    kept = all_referenced(session)
    stored = {path.relative_to(store.root).as_posix() for path in (store.root / "objects").rglob("*") if path.is_file()}
    return apply_removal(store, stored - kept, [], grace_s)
