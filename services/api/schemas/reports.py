"""Report schemas: ``EvaluationCreate`` in, ``ReportPublic`` out (DSC/ASD per case and class, means, overlays)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from services.common.models import JobStatus, Report, ReportEntry


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A UTC timestamp (``...Z`` in JSON); SQLite hands back naive datetimes, which are UTC here."""


class EvaluationCreate(BaseModel):
    """Score a model on the labelled cases of one split of a dataset (run by a worker)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    split: Literal["train", "val", "test"] = "val"


class ClassScore(BaseModel):
    dice: float | None
    asd: float | None
    status: str


class CaseScores(BaseModel):
    case_id: str
    classes: dict[str, ClassScore]


class ReportPublic(BaseModel):
    """A report; ``summary`` is the metrics aggregate (``mean``, ``per_class``, ``unit``, ``rule``) once finished."""

    id: str
    source: str
    model_id: str
    project: str
    dataset_id: str | None
    split: str | None
    status: JobStatus
    progress: float
    error: str | None
    unit: str | None
    summary: dict[str, Any] | None
    cases: list[CaseScores]
    overlay_urls: dict[str, str]
    created_at: UtcDatetime
    finished_at: UtcDatetime | None

    @classmethod
    def from_rows(
        cls, report: Report, entries: Iterable[ReportEntry], overlay_url: Callable[[str], str]
    ) -> ReportPublic:
        """Build from the report row and its entries (in insertion order); ``overlay_url(case_id)`` gives a URL."""
        cases: dict[str, dict[str, ClassScore]] = {}
        for entry in entries:
            score = ClassScore(dice=entry.dice, asd=entry.asd, status=entry.status)
            cases.setdefault(entry.case_id, {})[entry.class_name] = score
        return cls(
            id=report.id,
            source=report.source,
            model_id=report.model_id,
            project=report.project,
            dataset_id=report.dataset_id,
            split=report.split,
            status=JobStatus(report.status),
            progress=report.progress,
            error=report.error,
            unit=report.unit,
            summary=report.summary,
            cases=[CaseScores(case_id=case_id, classes=classes) for case_id, classes in cases.items()],
            overlay_urls={case_id: overlay_url(case_id) for case_id in report.overlays or {}},
            created_at=report.created_at,
            finished_at=report.finished_at,
        )
