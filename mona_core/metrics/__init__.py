"""Metrics stage of mona_core: per-class 3D DSC and ASD with explicit empty cases (no torch)."""

from mona_core.metrics.segmentation import (
    RULE_TEXT,
    CaseMetrics,
    ClassMetrics,
    MetricAccumulator,
    Status,
    asd_unit,
    evaluate_case,
    evaluate_volumes,
    spacing_zyx_from_xyz,
)

__all__ = [
    "RULE_TEXT",
    "CaseMetrics",
    "ClassMetrics",
    "MetricAccumulator",
    "Status",
    "asd_unit",
    "evaluate_case",
    "evaluate_volumes",
    "spacing_zyx_from_xyz",
]
