"""Dataset routes: create / list / get datasets, upload one case (image + optional label) or a whole archive.

Uploads stream to ``tmp/`` (``services.api.uploads``); validation, storing and the database rows are done by
``services.common.ingest`` in a worker thread, all or nothing. Whatever fails leaves no row and no file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mona_core.data.dataset import DatasetError
from services.api.deletions import DELETE_RESPONSES, finish_deletion
from services.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from services.api.schemas.common import Page, error_responses
from services.api.schemas.datasets import ArchivePublic, CasePublic, DatasetCreate, DatasetPublic, check_plain_text
from services.api.scope import get_or_404, paged, project_for_new, visible
from services.api.uploads import Received, UploadSpec, receive_multipart
from services.common import deletion, ingest
from services.common.archives import ArchiveError, ArchiveLimits, archive_suffix, extract_archive
from services.common.auth import Principal
from services.common.models import Case, Dataset
from services.common.settings import Settings
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

router = APIRouter(tags=["datasets"])


_CASE_FORM: dict[str, Any] = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["image"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": ".nii, .nii.gz, .mha or .nrrd"},
                "label": {"type": "string", "format": "binary", "description": "optional label map on the grid"},
                "case_id": {"type": "string", "description": "default: from the image file name"},
                "patient_id": {"type": "string", "description": "default: the case id before '_frame'"},
                "split": {"type": "string", "enum": list(ingest.SPLITS), "default": "train"},
            },
        }
    }
}
_ARCHIVE_FORM: dict[str, Any] = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["archive"],
            "properties": {"archive": {"type": "string", "format": "binary", "description": ".zip or .tar.gz"}},
        }
    }
}


@contextmanager
def _as_http() -> Iterator[None]:
    """Ingest and archive errors as HTTP answers: 409 for a duplicate case id, else 422."""
    try:
        yield
    except ingest.DuplicateCaseError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except (ingest.IngestError, ArchiveError, DatasetError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


def _dataset_or_404(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    return get_or_404(session, principal, Dataset, dataset_id, "dataset")


def _counts(session: Session, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Case, patient, labelled-case and per-split counts of the datasets that have cases (two grouped queries)."""
    labelled = func.sum(case((Case.role == "labelled", 1), else_=0))
    patients = func.count(func.distinct(Case.patient_id))
    totals = select(Case.dataset_id, func.count(), patients, labelled).where(Case.dataset_id.in_(ids))
    counts: dict[str, dict[str, Any]] = {
        row[0]: {"n_cases": int(row[1]), "n_patients": int(row[2]), "n_labelled_cases": int(row[3] or 0), "splits": {}}
        for row in session.execute(totals.group_by(Case.dataset_id))
    }
    per_split = select(Case.dataset_id, Case.split, func.count()).where(Case.dataset_id.in_(ids))
    for dataset_id, split, n in session.execute(per_split.group_by(Case.dataset_id, Case.split)):
        counts[dataset_id]["splits"][split] = int(n)
    return counts


def _publics(session: Session, datasets: Sequence[Dataset]) -> list[DatasetPublic]:
    counts = _counts(session, [row.id for row in datasets])
    empty = {"n_cases": 0, "n_patients": 0, "n_labelled_cases": 0, "splits": {}}
    return [
        DatasetPublic(
            id=row.id,
            name=row.name,
            preset=row.preset,
            classes=list(row.classes),
            project=row.project,
            created_at=row.created_at,
            **counts.get(row.id, empty),
        )
        for row in datasets
    ]


@router.post("/datasets", status_code=status.HTTP_201_CREATED)
def create_dataset(body: DatasetCreate, session: SessionDep, principal: PrincipalDep) -> DatasetPublic:
    """A new, empty dataset in the key's project (an admin key may name another with ``project``)."""
    project = project_for_new(principal, body.project)
    row = Dataset(name=body.name, preset=body.preset, classes=list(body.classes), project=project)
    session.add(row)
    session.commit()
    logger.info("created dataset %s (%s, %d classes)", row.id, row.preset, len(row.classes))
    return _publics(session, [row])[0]


@router.get("/datasets")
def list_datasets(
    session: SessionDep,
    principal: PrincipalDep,
    project: Annotated[str | None, Query(description="admin keys: only this project's datasets")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[DatasetPublic]:
    """The datasets this key sees, newest first."""
    query = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id)
    query = visible(query, Dataset, principal, project).where(Dataset.deleted_at.is_(None))
    rows, total = paged(session, query, limit, offset)
    return Page(items=_publics(session, rows), total=total, limit=limit, offset=offset)


@router.get("/datasets/{dataset_id}")
def get_dataset(dataset_id: str, session: SessionDep, principal: PrincipalDep) -> DatasetPublic:
    return _publics(session, [_dataset_or_404(session, principal, dataset_id)])[0]


@router.get("/datasets/{dataset_id}/cases")
def list_cases(
    dataset_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    split: Annotated[str | None, Query(pattern="^(train|val|test)$")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[CasePublic]:
    """The cases of a dataset ordered by case id, optionally of one split."""
    _dataset_or_404(session, principal, dataset_id)
    query = select(Case).where(Case.dataset_id == dataset_id).order_by(Case.case_id)
    if split is not None:
        query = query.where(Case.split == split)
    rows, total = paged(session, query, limit, offset)
    return Page(items=[CasePublic.model_validate(row) for row in rows], total=total, limit=limit, offset=offset)


@router.post(
    "/datasets/{dataset_id}/cases",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": _CASE_FORM}},
    responses=error_responses(400, 409, 413),
)
async def upload_case(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> CasePublic:
    """One case: ``image`` (+ optional ``label``) NIfTI files; optional ``case_id``, ``patient_id``, ``split``."""
    dataset = await run_in_threadpool(_dataset_or_404, session, principal, dataset_id)
    spec = UploadSpec(
        max_bytes=settings.max_upload_bytes,
        files={"image": ingest.nifti_suffix, "label": ingest.nifti_suffix},
        fields=("case_id", "patient_id", "split"),
    )
    received = await receive_multipart(request, store, spec)
    try:
        with _as_http():
            row = await run_in_threadpool(_ingest_case, session, store, settings, dataset, received)
    finally:
        received.discard(store)
    return CasePublic.model_validate(row)


def _ingest_case(
    session: Session, store: ArtifactStore, settings: Settings, dataset: Dataset, received: Received
) -> Case:
    image = received.files.get("image")
    if image is None:
        raise ingest.IngestError("expected an 'image' file part, got none")
    _check_form_fields(received.fields)
    label = received.files.get("label")
    label_pair = (label.path, label.filename) if label else None
    staged = ingest.staged_case((image.path, image.filename), label_pair, received.fields)
    checked = ingest.check_case(staged, len(dataset.classes), settings.max_voxels)
    return ingest.store_cases(session, store, dataset.id, [checked])[0]


def _check_form_fields(fields: dict[str, str]) -> None:
    """Text form fields (``case_id``, ``patient_id``, ``split``) without NUL or control characters (422)."""
    for name, value in fields.items():
        try:
            check_plain_text(value, name)
        except ValueError as exc:
            raise ingest.IngestError(str(exc)) from exc


@router.post(
    "/datasets/{dataset_id}/archive",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": _ARCHIVE_FORM}},
    responses=error_responses(400, 409, 413),
)
async def upload_archive(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> ArchivePublic:
    """An nnU-Net raw dataset as ``.zip`` / ``.tar.gz``: every case is validated, then all are stored, or none."""
    dataset = await run_in_threadpool(_dataset_or_404, session, principal, dataset_id)
    spec = UploadSpec(max_bytes=settings.max_archive_bytes, files={"archive": archive_suffix})
    with _as_http():
        received = await receive_multipart(request, store, spec)
    try:
        with _as_http():
            rows = await run_in_threadpool(_ingest_archive, session, store, settings, dataset, received)
    finally:
        received.discard(store)
    cases = [CasePublic.model_validate(row) for row in rows]
    return ArchivePublic(dataset_id=dataset.id, cases_added=len(cases), cases=cases)


def _ingest_archive(
    session: Session, store: ArtifactStore, settings: Settings, dataset: Dataset, received: Received
) -> list[Case]:
    archive = received.files.get("archive")
    if archive is None:
        raise ingest.IngestError("expected an 'archive' file part, got none")
    limits = ArchiveLimits(max_total_bytes=settings.max_archive_bytes, max_member_bytes=settings.max_upload_bytes)
    with store.staging_dir() as folder:
        extract_archive(archive.path, folder, limits)
        staged = ingest.cases_from_nnunet(folder, dataset)
        checked = [ingest.check_case(case, len(dataset.classes), settings.max_voxels) for case in staged]
        return ingest.store_cases(session, store, dataset.id, checked)


@router.delete(
    "/datasets/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
)
def delete_dataset(
    dataset_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Delete a dataset: every case with its images and labels (files shared with another dataset stay). Jobs and
    models trained on it keep its id; it answers 404 from now on. 409 while a job or evaluation on it is
    unfinished."""
    dataset = _dataset_or_404(session, principal, dataset_id)
    return finish_deletion(
        session, store, settings, f"dataset {dataset.id}", lambda: deletion.delete_dataset(session, dataset)
    )


@router.delete(
    "/datasets/{dataset_id}/cases/{case_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
)
def delete_case(
    dataset_id: str,
    case_id: str,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> Response:
    """Delete one case (by its case id) with its image and label files; 409 while a job on the dataset is
    unfinished."""
    dataset = _dataset_or_404(session, principal, dataset_id)
    case = session.scalar(select(Case).where(Case.dataset_id == dataset.id, Case.case_id == case_id))
    if case is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"expected a case id of dataset {dataset.id}, got {case_id!r}")
    what = f"case {case_id!r} of dataset {dataset.id}"
    return finish_deletion(session, store, settings, what, lambda: deletion.delete_case(session, dataset, case))
