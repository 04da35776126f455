"""Dataset and case schemas: ``DatasetCreate`` in, ``DatasetPublic`` / ``CasePublic`` / ``ArchivePublic`` out."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.api.schemas.common import GeometryPublic
from services.common.models import PROJECT_PATTERN

MAX_CLASSES = 256  # labels are stored as uint8: values 0..255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_plain_text(value: str, what: str) -> str:
    """``value`` when it has no NUL or other control character (Postgres refuses NUL in text; the others hide in
    logs, file names and the console); else ValueError naming ``what``."""
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"expected {what} without control characters, got {found.group()!r} at {found.start()}")
    return value


class DatasetCreate(BaseModel):
    """A new, empty dataset. ``classes[i]`` names label value ``i``; ``classes[0]`` is ``"background"``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["ACDC"])
    preset: Literal["mri", "ct"] = "mri"
    classes: list[str] = Field(min_length=2, max_length=MAX_CLASSES, examples=[["background", "RV", "Myo", "LV"]])
    project: str | None = Field(
        default=None,
        pattern=PROJECT_PATTERN,
        description="the project to create it in: the key's own by default; only admin keys may name another",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        return check_plain_text(name, "a dataset name")

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, classes: list[str]) -> list[str]:
        for number, name in enumerate(classes):
            check_plain_text(name, f"classes[{number}]")
        if classes[0] != "background":
            raise ValueError(f"expected classes[0] to be 'background', got {classes[0]!r}")
        bad = [name for name in classes if not 1 <= len(name.strip()) <= 100 or name != name.strip()]
        if bad:
            raise ValueError(f"expected class names of 1 to 100 characters without outer spaces, got {bad[:3]}")
        repeated = sorted({name for name in classes if classes.count(name) > 1})
        if repeated:
            raise ValueError(f"expected unique class names, got repeated {repeated}")
        return classes


class DatasetPublic(BaseModel):
    """A dataset with its case counts; ``splits`` maps a split name (train / val / test) to its number of cases."""

    id: str
    name: str
    preset: str
    classes: list[str]
    project: str
    created_at: datetime
    n_cases: int
    n_patients: int
    n_labelled_cases: int
    splits: dict[str, int]


class CasePublic(BaseModel):
    """One stored case. ``geometry`` is the image grid (size, spacing, origin, direction in SimpleITK order)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    dataset_id: str
    case_id: str
    patient_id: str
    split: str
    role: Literal["labelled", "unlabelled"]
    image_sha256: str
    label_sha256: str | None
    geometry: GeometryPublic


class ArchivePublic(BaseModel):
    """The result of an archive upload: every case it added (all of them or, on any error, none)."""

    dataset_id: str
    cases_added: int
    cases: list[CasePublic]
