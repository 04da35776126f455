"""Database models (SQLAlchemy 2). Alembic migrations in ``migrations/`` are generated from and checked against these.

Ids are 32-character hex UUIDs made by the service; artifact columns (``*_key``) hold keys of the content-addressed
store, never user-supplied names.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

DEFAULT_PROJECT = "default"
"""The project of rows made before projects existed, of the bootstrap key and of keys made without ``--project``."""
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""Project names: 1-64 lower-case letters, digits, ``-`` and ``_``, starting with a letter or digit."""


def project_column() -> Mapped[str]:
    """The owning project of a row: a key sees the rows of its project (an admin key sees all)."""
    return mapped_column(String(64), default=DEFAULT_PROJECT, server_default=DEFAULT_PROJECT, index=True)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    salt: Mapped[str | None] = mapped_column(String(32), default=None)
    """Hex salt of ``key_hash = HMAC-SHA256(salt, key)``; NULL on legacy rows (a bare SHA-256 of the key)."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    project: Mapped[str] = project_column()
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    """An admin key sees and acts on every project's rows; the bootstrap key (``MONA_API_KEY``) is one."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str] = mapped_column(String(16))
    classes: Mapped[list[Any]] = mapped_column()
    project: Mapped[str] = project_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    """Set when the dataset was deleted: its cases are gone, the nameless row stays for the jobs trained on it."""


class Case(Base):
    """One uploaded volume (and its label, if any). ``role`` is labelled / unlabelled; ``split`` train / val / test."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("dataset_id", "case_id", name="uq_cases_dataset_case"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[str] = mapped_column(String(200))
    patient_id: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    image_key: Mapped[str] = mapped_column(String(120))
    image_sha256: Mapped[str] = mapped_column(String(64))
    label_key: Mapped[str | None] = mapped_column(String(120), default=None)
    label_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    geometry: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingJob(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    project: Mapped[str] = project_column()
    config: Mapped[dict[str, Any]] = mapped_column()
    labelled_patients: Mapped[int | None] = mapped_column(default=None)
    labelled_ratio: Mapped[float | None] = mapped_column(Float, default=None)
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    total_iterations: Mapped[int] = mapped_column(Integer, default=0)
    eta_s: Mapped[float | None] = mapped_column(Float, default=None)
    latest_losses: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    best_val_dice: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    device: Mapped[str | None] = mapped_column(String(16), default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    callback_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    """Announced with a signed POST when the job ends (``services.common.webhooks``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobMetric(Base):
    """One logged training step: losses, lr and (on validation steps) the validation DSC."""

    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_step", "job_id", "step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column()


class JobLog(Base):
    __tablename__ = "job_logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)


class Model(Base):
    """An exported model whose ONNX parity check passed: ``model.onnx`` + ``manifest.json`` in the store.
    ``postprocess``: its manifest's, what each segmentation does to the predicted mask."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    project: Mapped[str] = project_column()
    onnx_key: Mapped[str] = mapped_column(String(120))
    manifest_key: Mapped[str] = mapped_column(String(120))
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    classes: Mapped[list[Any]] = mapped_column()
    preset: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer)
    postprocess: Mapped[str] = mapped_column(String(32), default="none", server_default="none")
    metrics: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Segmentation(Base):
    """One segmented scan: an upload to ``/segment``, or one case of a batch (``batch_id``, ``case_id``)."""

    __tablename__ = "segmentations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("reports.id"), index=True, default=None)
    case_id: Mapped[str | None] = mapped_column(String(200), default=None)
    project: Mapped[str] = project_column()
    input_sha256: Mapped[str] = mapped_column(String(64))
    mask_key: Mapped[str] = mapped_column(String(120))
    overlay_key: Mapped[str | None] = mapped_column(String(120), default=None)
    report_id: Mapped[str | None] = mapped_column(String(32), default=None)
    viewer_image_key: Mapped[str | None] = mapped_column(String(120), default=None)
    """The scan (as NIfTI) kept for the console's slice viewer; only segmentations made in the console keep it."""
    viewer_label_key: Mapped[str | None] = mapped_column(String(120), default=None)
    geometry: Mapped[dict[str, Any]] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Report(Base):
    """A DSC/ASD report: of a model on a dataset split (``source`` evaluation), of one segmentation, or of a batch
    segmentation (``source`` batch: the cases of a split or ``case_ids``, each a ``Segmentation`` row; entries for
    the labelled ones). Evaluations and batches are worker tasks: status, progress, attempts and heartbeat."""

    __tablename__ = "reports"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    project: Mapped[str] = project_column()
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), default=None)
    split: Mapped[str | None] = mapped_column(String(16), default=None)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    unit: Mapped[str | None] = mapped_column(String(200), default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    overlays: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    case_ids: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    """A batch's requested cases (None: every case of ``split``)."""
    queue: Mapped[str | None] = mapped_column(String(16), default=None)
    """The worker queue the task goes to (None: the gpu queue)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class ReportEntry(Base):
    """DSC/ASD of one class in one case, with its status (ok / both_empty / prediction_empty / label_empty)."""

    __tablename__ = "report_entries"
    __table_args__ = (UniqueConstraint("report_id", "case_id", "class_name", name="uq_report_entries"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[str] = mapped_column(String(200))
    class_name: Mapped[str] = mapped_column(String(100))
    dice: Mapped[float | None] = mapped_column(Float, default=None)
    asd: Mapped[float | None] = mapped_column(Float, default=None)
    status: Mapped[str] = mapped_column(String(24))
