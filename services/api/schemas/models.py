"""Model and segmentation schemas: ``ModelPublic`` (an exported, parity-checked model) and ``SegmentationPublic``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.api.schemas.common import BestCheckpoint, GeometryPublic
from services.api.schemas.reports import ClassScore, ReportPublic, UtcDatetime
from services.common.models import JobStatus


class ExportParity(BaseModel):
    """How the ONNX graph was checked against torch at export: the largest logit difference on random inputs and on
    real slices of the run's data, the argmax agreement on those slices, and the tolerance it had to meet."""

    model_config = ConfigDict(extra="allow")

    tolerance: float
    max_abs_diff_random: float
    max_abs_diff_real: float | None = None
    argmax_agreement_real: float | None = None
    batch_checked: int | None = None
    export_batch: int | None = None


class ModelMetrics(BaseModel):
    """What the worker measured: the exported checkpoint's validation DSC (``best``: the best-on-validation
    checkpoint; ``None`` when the run had no validation and the last checkpoint was exported) and the parity check."""

    model_config = ConfigDict(extra="allow")

    best: BestCheckpoint | None = None
    parity: ExportParity | None = None


class ModelPublic(BaseModel):
    """``metrics`` holds what the worker measured (validation DSC, parity); ``onnx_sha256`` pins the ONNX file;
    ``postprocess`` is what each segmentation does to the mask (``none``, or ``largest_component``: each class keeps its
    largest connected component), from the training job's config."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    job_id: str
    project: str
    classes: list[str]
    preset: str
    size: int
    postprocess: str
    onnx_sha256: str
    metrics: ModelMetrics
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
    geometry: GeometryPublic
    seconds: float


class BatchCreate(BaseModel):
    """A batch segmentation: every case of ``split``, or the listed ``case_ids`` (labelled or not), of a dataset.

    ``queue``: ``cpu`` (default; ONNX Runtime is fast enough on CPUs) or ``gpu``."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    split: Literal["train", "val", "test"] | None = None
    case_ids: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    queue: Literal["cpu", "gpu"] = "cpu"

    @model_validator(mode="after")
    def _one_selection(self) -> BatchCreate:
        if (self.split is None) == (self.case_ids is None):
            raise ValueError("expected exactly one of split and case_ids, got " + ("both" if self.split else "neither"))
        if self.case_ids is not None and len(set(self.case_ids)) != len(self.case_ids):
            raise ValueError("expected unique case_ids, got repeats")
        return self


class BatchCase(BaseModel):
    """One case of a batch: its mask (once segmented) and, for a labelled case, its DSC/ASD per class."""

    case_id: str
    segmentation_id: str | None
    mask_url: str | None
    overlay_url: str | None
    scores: dict[str, ClassScore] | None
    error: str | None


class BatchPublic(BaseModel):
    """A batch segmentation: status and progress while it runs, then one mask per case (``masks_zip_url`` for all),
    per-case DSC/ASD where a label exists (``report_url``: the same as a report), failed cases with their error."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    kind: Literal["batch"] = "batch"
    model_id: str
    project: str
    dataset_id: str | None
    split: str | None
    case_ids: list[str] | None
    status: JobStatus
    progress: float
    error: str | None
    cases: list[BatchCase]
    summary: dict[str, Any] | None
    masks_zip_url: str
    report_url: str
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
