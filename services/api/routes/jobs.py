"""Training jobs: create (validated, committed, then sent to a GPU worker), list, read progress, metrics, logs, cancel.

The API only writes a job's request and its cancel flag; the worker owns every progress field.
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any, Final, cast

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, status
from fastapi.responses import FileResponse, PlainTextResponse, Response
from sqlalchemy import CursorResult, Update, func, select, update
from sqlalchemy.orm import Session

from mona_core.training.config import StudyConfig, TrainConfig
from services.api.deletions import DELETE_RESPONSES, finish_deletion
from services.api.deps import CeleryDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from services.api.routes.reports import send_or_fail, stored_file
from services.api.schemas.common import MetricRow, Page, error_responses
from services.api.schemas.jobs import JobCreate, JobLogLine, JobLogs, JobMetrics, JobPublic, StudyReport
from services.api.scope import get_or_404, paged, visible
from services.common import deletion
from services.common.auth import Principal
from services.common.models import Case, Dataset, JobLog, JobMetric, JobStatus, TrainingJob, new_id, utcnow
from services.common.storage import ArtifactStore
from services.common.tasks import send_train
from services.common.webhooks import notify_job_finished

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

_TYPES: Final[dict[str, tuple[type, ...]]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
_INT64: Final = 2**63


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _check_types(config: dict[str, Any]) -> None:
    """Reject JSON values of the wrong type (``"iterations": "10"``, ``"size": 1.5``, ``"seed": true``), numbers
    that are not finite (JSON's NaN and Infinity arrive as floats) and integers beyond int64, naming the field.

    Ranges are ``TrainConfig``'s and ``StudyConfig``'s (``mona_core.training.config.LIMITS``)."""
    annotations = {field.name: str(field.type) for field in fields(TrainConfig)}
    for name, value in config.items():
        _check_numbers(name, value)
        annotation = annotations.get(name, "")
        allowed = _TYPES.get(annotation.removesuffix(" | None"))
        if allowed is None or (value is None and annotation.endswith(" | None")):
            continue
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            raise _unprocessable(f"expected {name} to be {annotation}, got {type(value).__name__} {value!r}")


def _check_numbers(name: str, value: Any) -> None:
    """Every number in a config value (inside lists and objects too): finite, and an integer within int64."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise _unprocessable(f"expected {name} to be a finite number, got {item}")
        elif isinstance(item, int) and not -_INT64 <= item < _INT64:
            raise _unprocessable(f"expected {name} to be an integer within int64 (|n| < 2^63), got {item}")


def validate_request(body: JobCreate) -> TrainConfig | StudyConfig:
    """The ``TrainConfig`` (or, for kind ``study``, the ``StudyConfig``) of a request, or 422 with what was expected."""
    if body.labelled_patients is not None and body.labelled_ratio is not None:
        raise _unprocessable(
            f"expected labelled_patients or labelled_ratio, got both ({body.labelled_patients}, {body.labelled_ratio})"
        )
    if "init_from" in body.config:
        raise _unprocessable("expected no init_from in config (a finetune job names its pretrain job in from_job_id)")
    if body.from_job_id is not None and body.kind != "finetune":
        raise _unprocessable(f"expected from_job_id only for kind finetune, got kind {body.kind!r}")
    _check_types(body.config)
    try:
        if body.kind == "study":
            return _study_request(body)
        return TrainConfig.from_dict({**body.config, "device": body.device, "method": body.kind})
    except (ValueError, TypeError) as exc:
        raise _unprocessable(str(exc)) from exc


def _study_request(body: JobCreate) -> StudyConfig:
    """A study takes its labelled ratios in ``config["ratios"]`` and its methods in ``config["methods"]``."""
    if body.labelled_patients is not None or body.labelled_ratio is not None:
        raise _unprocessable("expected the study's labelled ratios in config.ratios, got labelled_patients/ratio")
    return StudyConfig.from_request({**body.config, "device": body.device})


def _check_dataset(session: Session, principal: Principal, dataset_id: str, labelled_patients: int | None) -> Dataset:
    """The dataset (404 if unknown), which must hold a labelled case and at least ``labelled_patients`` patients
    with labelled cases (422); the worker picks the patients (among the fully labelled training patients)."""
    dataset = get_or_404(session, principal, Dataset, dataset_id, "dataset")
    patients = session.scalar(
        select(func.count(func.distinct(Case.patient_id))).where(
            Case.dataset_id == dataset.id, Case.label_key.is_not(None)
        )
    )
    if not patients:
        raise _unprocessable(f"expected a dataset with at least one labelled case, got none in dataset {dataset.id}")
    if labelled_patients is not None and labelled_patients > patients:
        raise _unprocessable(
            f"expected labelled_patients <= {patients} (the patients with labelled cases in dataset {dataset.id}), "
            f"got {labelled_patients}"
        )
    return dataset


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_job(
    body: JobCreate,
    session: SessionDep,
    store: StoreDep,
    celery: CeleryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> JobPublic:
    """Queue a training job (in its dataset's project); 503 (and the job marked failed) when the task broker cannot
    be reached."""
    config = validate_request(body)
    if body.callback_url is not None and not settings.webhook_secret:
        raise _unprocessable("expected MONA_WEBHOOK_SECRET set on the service for a callback_url, got none")
    dataset = _check_dataset(session, principal, body.dataset_id, body.labelled_patients)
    if body.from_job_id is not None and isinstance(config, TrainConfig):
        checkpoint = _pretrained_checkpoint(session, principal, store, body.from_job_id)
        config = replace(config, init_from=str(checkpoint))
    job = TrainingJob(
        id=new_id(),
        kind=body.kind,
        dataset_id=dataset.id,
        project=dataset.project,
        config=config.to_dict(),
        labelled_patients=body.labelled_patients,
        labelled_ratio=body.labelled_ratio,
        device=body.device,
        total_iterations=config.total_iterations if isinstance(config, StudyConfig) else config.iterations,
        callback_url=str(body.callback_url) if body.callback_url is not None else None,
    )
    session.add(job)
    session.commit()
    send_or_fail(session, job, lambda: send_train(celery, job.id))
    logger.info("queued %s job %s on dataset %s", job.kind, job.id, dataset.id)
    return JobPublic.model_validate(job)


def _pretrained_checkpoint(session: Session, principal: Principal, store: ArtifactStore, job_id: str) -> Path:
    """The last checkpoint of a succeeded pretrain job (404 unknown job, 422 wrong kind or status)."""
    source = get_or_404(session, principal, TrainingJob, job_id, "job")
    if source.kind != "pretrain" or source.status != JobStatus.SUCCEEDED.value:
        raise _unprocessable(f"expected a succeeded pretrain job, got a {source.status} {source.kind} job ({job_id})")
    return store.run_dir(source.id) / "checkpoints" / "last.pt"


@router.get("/jobs", response_model=Page[JobPublic])
def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    project: Annotated[str | None, Query(description="admin keys: only this project's jobs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[JobPublic]:
    """The jobs this key sees, newest first, optionally only those with one status."""
    query = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc())
    query = visible(query, TrainingJob, principal, project)
    if status_filter is not None:
        query = query.where(TrainingJob.status == status_filter.value)
    rows, total = paged(session, query, limit, offset)
    return Page(items=[JobPublic.model_validate(job) for job in rows], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobPublic:
    return JobPublic.model_validate(get_or_404(session, principal, TrainingJob, job_id, "job"))


@router.get("/jobs/{job_id}/metrics", response_model=JobMetrics, response_model_exclude_unset=True)
def get_job_metrics(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobMetrics:
    """Logged steps ordered by step: losses, lr and, on validation steps, the validation DSC."""
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    rows = session.scalars(select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.step, JobMetric.id))
    history = [
        MetricRow.model_validate({"step": row.step, **{k: v for k, v in row.values.items() if k != "step"}})
        for row in rows
    ]
    return JobMetrics(job_id=job.id, history=history)


@router.get("/jobs/{job_id}/logs", response_model=JobLogs)
def get_job_logs(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobLogs:
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    rows = session.scalars(select(JobLog).where(JobLog.job_id == job.id).order_by(JobLog.id))
    lines = [JobLogLine(at=row.created_at, level=row.level, message=row.message) for row in rows]
    return JobLogs(job_id=job.id, lines=lines)


def _update_if(job_id: str, state: JobStatus) -> Update:
    """An UPDATE of the job that only applies while it still has status ``state``."""
    return update(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.status == state.value)


def _updated(session: Session, statement: Update) -> int:
    """Rows changed by an UPDATE (0 when its WHERE no longer matches)."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=error_responses(409))
def cancel_job(
    job_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, background: BackgroundTasks
) -> JobPublic:
    """Queued: cancelled at once. Running: flagged; the worker stops at its next step. Finished: 409.

    Conditional updates, so a worker that picks the job up meanwhile cannot be overwritten.
    """
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    cancelled = {"status": JobStatus.CANCELLED.value, "stage": "cancelled", "finished_at": utcnow()}
    queued = _update_if(job.id, JobStatus.QUEUED).values(cancel_requested=True, **cancelled)
    running = _update_if(job.id, JobStatus.RUNNING).values(cancel_requested=True)
    if not _updated(session, queued) and not _updated(session, running):
        session.refresh(job)
        raise HTTPException(status.HTTP_409_CONFLICT, f"expected a queued or running job, got status {job.status}")
    session.commit()
    session.refresh(job)
    logger.info("cancel requested for job %s (now %s)", job.id, job.status)
    if job.status == JobStatus.CANCELLED.value:  # a running job is announced by its worker when it stops
        background.add_task(notify_job_finished, settings, job.id)
    return JobPublic.model_validate(job)


def _study_result(session: Session, principal: Principal, job_id: str) -> dict[str, Any]:
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    if job.kind != "study" or job.result is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"expected a finished study job, got a {job.status} {job.kind} job"
        )
    return dict(job.result)


@router.get("/jobs/{job_id}/study", response_model=StudyReport)
def get_study(job_id: str, session: SessionDep, principal: PrincipalDep) -> StudyReport:
    """The study's Table-I-style report: every (ratio, method) cell with DSC / ASD per class and the means, each
    figure labelled with its checkpoint and split."""
    result = _study_result(session, principal, job_id)
    return StudyReport.model_validate({key: value for key, value in result.items() if key != "figure_key"})


@router.get("/jobs/{job_id}/study.md", response_class=PlainTextResponse)
def get_study_markdown(job_id: str, session: SessionDep, principal: PrincipalDep) -> PlainTextResponse:
    return PlainTextResponse(str(_study_result(session, principal, job_id)["markdown"]), media_type="text/markdown")


_PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "a PNG picture"}}


@router.get("/jobs/{job_id}/study.png", response_class=FileResponse, responses=_PNG)
def get_study_plot(job_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep) -> FileResponse:
    """Mean DSC and ASD against the labelled ratio, one line per method."""
    key = str(_study_result(session, principal, job_id)["figure_key"])
    return FileResponse(stored_file(store, key, "study plot"), media_type="image/png")


@router.get("/jobs/{job_id}/loss_curve.png", response_class=FileResponse, responses=_PNG)
def get_loss_curve(job_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep) -> FileResponse:
    """The training losses (and validation DSC) against the step, as the run last drew them (at each log)."""
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    path = store.run_dir(job.id) / "loss_curve.png"
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"expected a loss curve of job {job.id}, got none drawn yet")
    return FileResponse(path, media_type="image/png")


@router.delete(
    "/jobs/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
)
def delete_job(
    job_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Delete a finished job: its row, metrics, logs and checkpoints. 409 while it is queued or running (cancel it
    first) or while its model exists (delete the model first)."""
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    what = f"job {job.id}"
    return finish_deletion(session, store, settings, what, lambda: deletion.delete_job(session, store, job))
