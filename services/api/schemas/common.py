"""Shapes every route shares: the error body, paginated lists, and the error responses routes declare in OpenAPI."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Item = TypeVar("Item")


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what was expected and what came instead."""

    detail: str = Field(examples=["expected the id of an existing dataset, got 'abc'"])


class Page(BaseModel, Generic[Item]):
    """A page of a list, newest first: ``items`` from ``offset``, at most ``limit`` of them, out of ``total``."""

    items: list[Item]
    total: int
    limit: int
    offset: int


class GeometryPublic(BaseModel):
    """An image grid in SimpleITK's (x, y, z) order: voxel counts, spacing and origin in mm, the 3x3 direction
    cosines row by row."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: list[float] = Field(min_length=9, max_length=9)


class BestCheckpoint(BaseModel):
    """The best-on-validation checkpoint of a run: its step and mean foreground DSC (0-1) on the validation split,
    which also chose it."""

    step: int
    val_dice: float


class MeanScores(BaseModel):
    """Mean foreground DSC (0-1) and ASD (in the report's unit) over classes; ``None`` where undefined."""

    dice: float | None
    asd: float | None


class ClassSummary(MeanScores):
    """One class over the cases: DSC over the cases where the class is in the label or the prediction (``n_dice``),
    ASD over the cases where it is in both (``n_asd``); ``status_counts`` per case status."""

    n_dice: int
    n_asd: int
    status_counts: dict[str, int]


class MetricRow(BaseModel):
    """One logged training step: ``step``, ``lr``, the losses of the method (``loss``, ``loss_ce``, ...) and, on
    validation steps, ``val_dice`` (mean foreground DSC, 0-1)."""

    model_config = ConfigDict(extra="allow")

    step: int
    lr: float | None = None
    val_dice: float | None = None


_DESCRIPTIONS = {
    400: "bad request (e.g. a malformed multipart body)",
    401: "no X-API-Key header",
    403: "an unknown or revoked key, or a project this key may not use",
    404: "no such resource for this key (other projects' resources answer the same)",
    409: "in conflict with the resource's state (e.g. a job still running, a duplicate case id)",
    413: "upload or volume past the configured size cap",
    422: "a request that breaks a rule (the detail names the field or file)",
    503: "the database or the task broker is unavailable; retry later",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``codes``, each a JSON ``ErrorBody``."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}
