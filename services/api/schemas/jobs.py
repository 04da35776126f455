"""Training job schemas: ``JobCreate`` in, ``JobPublic`` out, plus the metric history and log lines of a job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from services.api.schemas.common import MetricRow
from services.api.schemas.reports import UtcDatetime
from services.common.models import JobStatus

JobKind = Literal["supervised", "mean_teacher", "cps", "bcp", "pretrain", "finetune", "mona", "study"]
"""The training methods of ``mona_core.training.config.METHODS`` and ``study`` (a test keeps the two in step)."""


class JobCreate(BaseModel):
    """A training request. ``config`` holds any ``TrainConfig`` field (``iterations``, ``size``, ``lr`` ...).

    Give ``labelled_patients`` (a count) or ``labelled_ratio`` (a fraction of the labelled patients), not both;
    with neither, the worker trains on every labelled patient. The worker chooses which patients.
    """

    model_config = ConfigDict(extra="forbid")

    kind: JobKind = Field(examples=["supervised"])
    dataset_id: str
    labelled_patients: int | None = Field(default=None, ge=1)
    labelled_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    config: dict[str, Any] = Field(default_factory=dict, examples=[{"iterations": 2000, "size": 128}])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    callback_url: AnyHttpUrl | None = Field(
        default=None,
        description="POSTed a signed JSON notice when the job ends (succeeded, failed, cancelled); see the README",
    )
    from_job_id: str | None = Field(
        default=None,
        description="for kind finetune: the succeeded pretrain job whose last checkpoint it starts from "
        "(none: MONA fine-tuning from random weights)",
    )


class SelectionPublic(BaseModel):
    """Which training patients a job labelled (chosen by the worker, by patient, seeded) and which it left
    unlabelled; ``request`` is what was asked (a count or a ratio)."""

    labelled: list[str]
    unlabelled: list[str]
    seed: int
    request: dict[str, Any]


class JobPublic(BaseModel):
    """A training job as the API shows it; progress fields are written by the worker."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    dataset_id: str
    project: str
    status: JobStatus
    stage: str
    progress: float
    iteration: int
    total_iterations: int
    eta_s: float | None
    latest_losses: dict[str, float | None] | None
    best_val_dice: float | None
    model_id: str | None
    error: str | None
    attempts: int
    device: str | None
    config: dict[str, Any]
    selection: SelectionPublic | None
    labelled_patients: int | None
    labelled_ratio: float | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    cancel_requested: bool
    callback_url: str | None


class JobMetrics(BaseModel):
    """Logged training steps, ordered by step: ``{"step": int, <loss / lr / val_dice values>}``."""

    job_id: str
    history: list[MetricRow]


class JobLogLine(BaseModel):
    at: UtcDatetime
    level: str
    message: str


class JobLogs(BaseModel):
    job_id: str
    lines: list[JobLogLine]
