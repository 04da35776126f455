"""Reports: queue an evaluation of a model on a dataset split, read a report (DSC/ASD per case), serve overlays.

Also the small helpers the jobs and models routes share: relative URLs by route name, and sending a task after
commit (a broker that is down marks the row failed and answers 503).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.api.deletions import DELETE_RESPONSES, finish_deletion
from services.api.deps import CeleryDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from services.api.schemas.reports import EvaluationCreate, ReportPublic
from services.api.scope import get_or_404
from services.api.segmentation import report_overlay
from services.common import deletion
from services.common.models import Case, Dataset, JobStatus, Model, Report, ReportEntry, TrainingJob, new_id, utcnow
from services.common.storage import ArtifactStore
from services.common.tasks import send_evaluate

logger = logging.getLogger(__name__)

router = APIRouter(tags=["reports"])


def api_path(request: Request, name: str, **params: str) -> str:
    """The path (with any root path) of the route called ``name``; path parameters are percent-encoded."""
    return request.url_for(name, **{key: quote(value, safe="") for key, value in params.items()}).path


def stored_file(store: ArtifactStore, key: str, what: str) -> Path:
    path = store.path(key)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"expected the {what} in the artifact store, got none")
    return path


def send_or_fail(session: Session, row: TrainingJob | Report, send: Callable[[], None]) -> None:
    """Send the task of a committed row; if the broker refuses, mark the row failed and answer 503."""
    try:
        send()
    except Exception as exc:
        logger.exception("could not send the task of %s %s", type(row).__name__, row.id)
        row.status = JobStatus.FAILED.value
        row.error = f"expected a reachable task broker, got {type(exc).__name__}: {exc}"
        row.finished_at = utcnow()
        session.commit()
        detail = f"expected a reachable task broker, got {type(exc).__name__} ({type(row).__name__} {row.id} failed)"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail) from exc


def report_public(request: Request, session: Session, report: Report) -> ReportPublic:
    entries = session.scalars(select(ReportEntry).where(ReportEntry.report_id == report.id).order_by(ReportEntry.id))
    return ReportPublic.from_rows(
        report, entries, lambda case_id: api_path(request, "report_overlay", report_id=report.id, case_id=case_id)
    )


def _check_evaluable(session: Session, model: Model, dataset: Dataset, split: str) -> None:
    """422 unless the dataset has the model's classes and labelled cases in ``split``."""
    if [str(name) for name in dataset.classes] != [str(name) for name in model.classes]:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"expected a dataset with the model's classes {model.classes}, got {dataset.classes}",
        )
    labelled = session.scalar(
        select(func.count())
        .select_from(Case)
        .where(Case.dataset_id == dataset.id, Case.split == split, Case.label_key.is_not(None))
    )
    if not labelled:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"expected labelled cases in split {split!r} of dataset {dataset.id}, got none",
        )


@router.post("/models/{model_id}/evaluations", status_code=status.HTTP_202_ACCEPTED, response_model=ReportPublic)
def create_evaluation(
    model_id: str,
    body: EvaluationCreate,
    request: Request,
    session: SessionDep,
    celery: CeleryDep,
    principal: PrincipalDep,
) -> ReportPublic:
    """Queue a DSC/ASD evaluation of the model on the labelled cases of one split; a worker fills the report (in
    the model's project)."""
    model = get_or_404(session, principal, Model, model_id, "model")
    dataset = get_or_404(session, principal, Dataset, body.dataset_id, "dataset")
    _check_evaluable(session, model, dataset, body.split)
    report = Report(
        id=new_id(),
        source="evaluation",
        model_id=model.id,
        dataset_id=dataset.id,
        split=body.split,
        project=model.project,
    )
    session.add(report)
    session.commit()
    send_or_fail(session, report, lambda: send_evaluate(celery, report.id))
    logger.info("queued evaluation %s of model %s on %s/%s", report.id, model.id, dataset.id, body.split)
    return report_public(request, session, report)


@router.get("/reports/{report_id}", response_model=ReportPublic)
def get_report(report_id: str, request: Request, session: SessionDep, principal: PrincipalDep) -> ReportPublic:
    return report_public(request, session, get_or_404(session, principal, Report, report_id, "report"))


@router.get(
    "/reports/{report_id}/overlay/{case_id}",
    name="report_overlay",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}},
)
def get_report_overlay(
    report_id: str, case_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep
) -> FileResponse:
    """The overlay PNG of one case (looked up in the report, never used as a path)."""
    report = get_or_404(session, principal, Report, report_id, "report")
    key = report_overlay(session, store, report, case_id)
    if key is None:
        message = f"expected a case id of report {report.id} with an overlay, got {case_id!r}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, message)
    return FileResponse(stored_file(store, key, "overlay"), media_type="image/png")


@router.delete(
    "/reports/{report_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
)
def delete_report(
    report_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Delete a finished report with its per-case entries and overlays; 409 while it is queued or running."""
    report = get_or_404(session, principal, Report, report_id, "report")
    return finish_deletion(
        session, store, settings, f"report {report.id}", lambda: deletion.delete_report(session, report)
    )
