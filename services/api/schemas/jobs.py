"""Training job schemas: ``JobCreate`` in, ``JobPublic`` out, plus the metric history and log lines of a job."""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mona_core.training.config import StudyConfig, TrainConfig
from services.api.schemas.common import BestCheckpoint, ClassSummary, MeanScores, MetricRow
from services.api.schemas.reports import CaseScores, UtcDatetime
from services.common.models import JobStatus

logger = logging.getLogger(__name__)
_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))

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
    config: TrainConfig | StudyConfig = Field(
        description="every option of the run, defaults filled in (a StudyConfig for kind study)"
    )
    selection: SelectionPublic | None
    labelled_patients: int | None
    labelled_ratio: float | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    cancel_requested: bool
    callback_url: str | None

    @field_validator("config", mode="before")
    @classmethod
    def _config_of_its_kind(cls, value: Any, info: ValidationInfo) -> Any:
        """The stored config as the ``TrainConfig`` (a ``StudyConfig`` for a study) the job runs with."""
        if not isinstance(value, dict):
            return value
        if info.data.get("kind") == "study":
            return StudyConfig(
                methods=tuple(value["methods"]),
                ratios=tuple(float(ratio) for ratio in value["ratios"]),
                base=_train_config(value["base"]),
                split_seed=int(value["split_seed"]),
            )
        return _train_config(value)


def _train_config(stored: dict[str, Any]) -> TrainConfig:
    """A stored config; options this version no longer has (a job of an older one) are left out and logged."""
    dropped = sorted(set(stored) - _TRAIN_FIELDS)
    if dropped:
        logger.warning("a stored job config has options this version does not know: %s", dropped)
    return TrainConfig(**{key: value for key, value in stored.items() if key in _TRAIN_FIELDS})


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


class CheckpointScores(BaseModel):
    """A checkpoint scored on whole volumes of one split: which (``best.pt``: best-on-validation, ``last.pt``),
    its step, the split, and the DSC (0-1) / ASD per class and their means."""

    model_config = ConfigDict(extra="allow")

    checkpoint: str
    step: int
    split: Literal["train", "val", "test"]
    unit: str
    rule: str
    cases: list[CaseScores]
    per_class: dict[str, ClassSummary]
    mean: MeanScores


class StudyCell(BaseModel):
    """One (labelled ratio, method) cell: its labelled patients, best-on-validation step, and ``scores`` by name
    (``best_val``: selected and scored on val, optimistic; ``last_val``; ``best_test`` when the dataset has a
    labelled test split). ``per_class`` / ``mean`` repeat ``best_val``."""

    method: str
    ratio: float
    labelled_patients: list[str]
    best: BestCheckpoint | None = None
    per_class: dict[str, ClassSummary]
    mean: MeanScores
    train_seconds: float
    scores: dict[str, CheckpointScores] = Field(default_factory=dict)


class StudyReport(BaseModel):
    """A finished study: its config, the unit of its figures, every cell, and the same as a markdown table."""

    dataset: str
    study: StudyConfig
    unit: str
    cells: list[StudyCell]
    markdown: str
