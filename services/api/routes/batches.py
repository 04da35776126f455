"""Batch segmentation: a model segments the cases of a dataset split (or listed cases) on a worker.

``POST /v1/models/{id}/segmentations`` queues it (202; the CPU queue unless ``queue`` says gpu); it is then a
segmentation like any other at ``/v1/segmentations/{id}`` (status, progress, one mask per case, DSC/ASD where a
case has a label), with every mask at once in ``/v1/segmentations/{id}/masks.zip``. Its DSC/ASD are also a report
at ``/v1/reports/{id}``. The work is ``services.worker.batch``.
"""

from __future__ import annotations

import logging
import zipfile
from collections import defaultdict
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from services.api.deps import CeleryDep, PrincipalDep, SessionDep, StoreDep
from services.api.routes.reports import api_path, send_or_fail, stored_file
from services.api.schemas.models import BatchCase, BatchCreate, BatchPublic
from services.api.schemas.reports import ClassScore
from services.api.scope import get_or_404
from services.common.auth import Principal
from services.common.models import Case, Dataset, JobStatus, Model, Report, ReportEntry, Segmentation, new_id
from services.common.reports import BATCH, batch_cases
from services.common.storage import ArtifactStore
from services.common.tasks import QUEUE_CPU, QUEUE_GPU, send_evaluate

logger = logging.getLogger(__name__)

router = APIRouter(tags=["segmentations"])
ZIP_MEDIA_TYPE = "application/zip"


def batch_or_none(session: Session, principal: Principal, batch_id: str) -> Report | None:
    """The batch with id ``batch_id`` if it is one this key sees, else None (then it may be a single segmentation)."""
    try:
        report = get_or_404(session, principal, Report, batch_id, "segmentation")
    except HTTPException:
        return None
    return report if report.source == BATCH else None


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _check_selection(session: Session, dataset: Dataset, body: BatchCreate) -> None:
    """422 unless the requested cases exist (``case_ids``) or the split has cases."""
    if body.case_ids is not None:
        found = set(
            session.scalars(select(Case.case_id).where(Case.dataset_id == dataset.id, Case.case_id.in_(body.case_ids)))
        )
        missing = [case_id for case_id in body.case_ids if case_id not in found]
        if missing:
            raise _unprocessable(f"expected case ids of dataset {dataset.id}, got unknown {missing[:5]}")
        return
    count = session.scalar(select(Case.id).where(Case.dataset_id == dataset.id, Case.split == body.split).limit(1))
    if count is None:
        raise _unprocessable(f"expected cases in split {body.split!r} of dataset {dataset.id}, got none")


@router.post("/models/{model_id}/segmentations", status_code=status.HTTP_202_ACCEPTED, response_model=BatchPublic)
def create_batch(
    model_id: str,
    body: BatchCreate,
    request: Request,
    session: SessionDep,
    celery: CeleryDep,
    principal: PrincipalDep,
) -> BatchPublic:
    """Queue a batch segmentation of a split (``split``) or of listed cases (``case_ids``, unlabelled ones too)."""
    model = get_or_404(session, principal, Model, model_id, "model")
    dataset = get_or_404(session, principal, Dataset, body.dataset_id, "dataset")
    _check_selection(session, dataset, body)
    report = Report(
        id=new_id(),
        source=BATCH,
        model_id=model.id,
        project=model.project,
        dataset_id=dataset.id,
        split=body.split,
        case_ids=body.case_ids,
        queue=QUEUE_GPU if body.queue == "gpu" else QUEUE_CPU,
    )
    session.add(report)
    session.commit()
    send_or_fail(session, report, lambda: send_evaluate(celery, report.id, report.queue))
    logger.info("queued batch segmentation %s of model %s on %s", report.id, model.id, dataset.id)
    return batch_public(request, session, report)


def batch_public(request: Request, session: Session, report: Report) -> BatchPublic:
    query = select(Segmentation).where(Segmentation.batch_id == report.id)
    rows = {str(row.case_id): row for row in session.scalars(query)}
    scores: dict[str, dict[str, ClassScore]] = defaultdict(dict)
    for entry in session.scalars(select(ReportEntry).where(ReportEntry.report_id == report.id)):
        scores[entry.case_id][entry.class_name] = ClassScore(dice=entry.dice, asd=entry.asd, status=entry.status)
    failed = dict((report.summary or {}).get("failed_cases", {}))
    wanted = [case.case_id for case in batch_cases(session, report)] if report.dataset_id else sorted(rows)
    cases = []
    for case_id in wanted:
        row = rows.get(case_id)
        cases.append(
            BatchCase(
                case_id=case_id,
                segmentation_id=row.id if row else None,
                mask_url=api_path(request, "segmentation_mask", segmentation_id=row.id) if row else None,
                overlay_url=(
                    api_path(request, "segmentation_overlay", segmentation_id=row.id)
                    if row and row.overlay_key
                    else None
                ),
                scores=scores.get(case_id),
                error=failed.get(case_id),
            )
        )
    return BatchPublic(
        id=report.id,
        model_id=report.model_id,
        project=report.project,
        dataset_id=report.dataset_id,
        split=report.split,
        case_ids=[str(case_id) for case_id in report.case_ids] if report.case_ids is not None else None,
        status=JobStatus(report.status),
        progress=report.progress,
        error=report.error,
        cases=cases,
        summary=report.summary,
        masks_zip_url=api_path(request, "segmentation_masks_zip", segmentation_id=report.id),
        report_url=api_path(request, "get_report", report_id=report.id),
        created_at=report.created_at,
        finished_at=report.finished_at,
    )


@router.get(
    "/segmentations/{segmentation_id}/masks.zip",
    name="segmentation_masks_zip",
    response_class=FileResponse,
    responses={200: {"content": {ZIP_MEDIA_TYPE: {}}}},
)
def get_masks_zip(segmentation_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep) -> FileResponse:
    """Every mask of a batch as ``<case id>.nii.gz`` in one zip (the cases segmented so far while it runs); a single
    segmentation's mask as ``mask.nii.gz``."""
    batch = batch_or_none(session, principal, segmentation_id)
    if batch is not None:
        query = select(Segmentation).where(Segmentation.batch_id == batch.id).order_by(Segmentation.case_id)
        members = [(f"{row.case_id}.nii.gz", row.mask_key) for row in session.scalars(query)]
    else:
        row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
        members = [("mask.nii.gz", row.mask_key)]
    archive = _zip(store, members)
    return FileResponse(
        archive,
        media_type=ZIP_MEDIA_TYPE,
        filename=f"masks-{segmentation_id}.zip",
        background=BackgroundTask(store.discard, archive),
    )


def _zip(store: ArtifactStore, members: list[tuple[str, str]]) -> Path:
    """A staging zip of stored masks (already compressed: stored, not deflated again)."""
    target = store.staging_file(".zip")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, key in members:
            archive.write(stored_file(store, key, "mask"), arcname=name)
    return target
