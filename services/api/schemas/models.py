"""Model and segmentation schemas: ``ModelPublic`` (an exported, parity-checked model) and ``SegmentationPublic``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from services.api.schemas.reports import ReportPublic, UtcDatetime


class ModelPublic(BaseModel):
    """``metrics`` holds what the worker measured (validation DSC, parity); ``onnx_sha256`` pins the ONNX file."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    job_id: str
    project: str
    classes: list[str]
    preset: str
    size: int
    onnx_sha256: str
    metrics: dict[str, Any]
    created_at: UtcDatetime


class SegmentationPublic(BaseModel):
    """One segmentation: the mask (on the input's grid) and, when a label came with it, its report and overlay."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    model_id: str
    project: str
    mask_url: str
    overlay_url: str | None
    report_id: str | None
    report: ReportPublic | None
    geometry: dict[str, Any]
    seconds: float
