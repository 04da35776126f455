"""Batch segmentation: a model segments the cases of a dataset split (or listed cases), on a worker.

The batch is a report of source ``batch`` (claimed, beaten and recovered like an evaluation). Each case becomes a
``Segmentation`` row (``batch_id``, ``case_id``) with its mask on the scan's own grid, committed one case at a time:
a batch whose worker was lost resumes where it stopped (cases already segmented are skipped). A case with a label,
in a dataset whose classes are the model's, also gets DSC/ASD entries in the report and an overlay; the report's
summary aggregates them at the end. A case that cannot be read or segmented is recorded in the summary's
``failed_cases`` and the others go on; the batch fails only when no case could be segmented.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select

from mona_core.inference.evaluate import ASD_UNIT
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_image, read_label, write_mask
from mona_core.metrics import CaseMetrics, ClassMetrics, MetricAccumulator, Status, evaluate_case, spacing_zyx_from_xyz
from mona_core.report import save_overlay_png
from services.common.db import session_scope
from services.common.models import Dataset, JobStatus, Model, Report, ReportEntry, Segmentation, utcnow
from services.common.reports import batch_cases
from services.common.settings import Settings
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)


def segment_batch(settings: Settings, store: ArtifactStore, report_id: str, segmenter: Segmenter) -> None:
    """Segment every case of the batch not segmented yet, then write the summary; the report succeeds."""
    with session_scope(settings.sqlalchemy_url) as session:
        report = session.get_one(Report, report_id)
        model = session.get_one(Model, report.model_id)
        dataset = session.get_one(Dataset, report.dataset_id)
        cases = [
            (case.case_id, case.image_key, case.label_key, case.image_sha256) for case in batch_cases(session, report)
        ]
        done = set(session.scalars(select(Segmentation.case_id).where(Segmentation.batch_id == report_id)))
        classes = [str(name) for name in model.classes]
        scored = [str(name) for name in dataset.classes] == classes
        failed: dict[str, str] = dict((report.summary or {}).get("failed_cases", {}))
    if not cases:
        raise ValueError(f"expected cases to segment in batch {report_id}, got none (deleted meanwhile?)")
    if done:
        logger.info("batch %s: resuming, %d of %d cases already segmented", report_id, len(done), len(cases))
    for number, (case_id, image_key, label_key, sha256) in enumerate(cases, start=1):
        if case_id not in done:
            try:
                _segment_case(settings, store, segmenter, report_id, (case_id, image_key, label_key, sha256), scored)
                failed.pop(case_id, None)
            except (ValueError, OSError) as exc:  # a bad scan (NiftiError is a ValueError) or a missing file
                logger.warning("batch %s: case %s failed: %s", report_id, case_id, exc)
                failed[case_id] = f"{type(exc).__name__}: {exc}"
        with session_scope(settings.sqlalchemy_url) as session:
            report = session.get_one(Report, report_id)
            report.progress = 0.99 * number / len(cases)
            report.summary = {**(report.summary or {}), "failed_cases": failed}
    _finish(settings, report_id, classes if scored else None, failed, len(cases))


def _segment_case(
    settings: Settings,
    store: ArtifactStore,
    segmenter: Segmenter,
    report_id: str,
    case: tuple[str, str, str | None, str],
    scored: bool,
) -> None:
    case_id, image_key, label_key, sha256 = case
    volume = read_image(store.path(image_key), max_voxels=settings.max_voxels)
    started = time.perf_counter()
    mask = segmenter.segment(volume)
    seconds = time.perf_counter() - started
    mask_key = store.put(write_mask(mask.array, mask.geometry, store.staging_file(".nii.gz")), ".nii.gz").key
    classes = list(segmenter.manifest.classes)
    metrics, overlay_key = None, None
    if scored and label_key is not None:
        truth = read_label(store.path(label_key), volume.geometry, len(classes), settings.max_voxels)
        spacing = spacing_zyx_from_xyz(volume.geometry.spacing)
        metrics = evaluate_case(mask.array, truth.array, classes, spacing, case_id=case_id)
        png = save_overlay_png(
            volume.array, mask.array, store.staging_file(".png"), label=truth.array, class_names=classes, title=case_id
        )
        overlay_key = store.put(png, ".png").key
    with session_scope(settings.sqlalchemy_url) as session:
        report = session.get_one(Report, report_id)
        session.add(
            Segmentation(
                model_id=report.model_id,
                project=report.project,
                batch_id=report_id,
                case_id=case_id,
                input_sha256=sha256,
                mask_key=mask_key,
                overlay_key=overlay_key,
                geometry=volume.geometry.to_dict(),
                seconds=seconds,
            )
        )
        if metrics is not None and overlay_key is not None:
            session.execute(
                delete(ReportEntry).where(ReportEntry.report_id == report_id, ReportEntry.case_id == case_id)
            )
            session.add_all(
                ReportEntry(
                    report_id=report_id, case_id=case_id, class_name=name, dice=m.dice, asd=m.asd, status=m.status
                )
                for name, m in metrics.classes.items()
            )
            report.overlays = {**(report.overlays or {}), case_id: overlay_key}


def _finish(
    settings: Settings, report_id: str, classes: Sequence[str] | None, failed: dict[str, str], total: int
) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        report = session.get_one(Report, report_id)
        summary: dict[str, Any] = {"failed_cases": failed, "n_cases": total, "n_segmented": total - len(failed)}
        entries = list(session.scalars(select(ReportEntry).where(ReportEntry.report_id == report_id)))
        if classes is not None and entries:
            summary.update(_aggregate(classes, entries))
            report.unit = ASD_UNIT
        report.summary = summary
        report.progress, report.finished_at = 1.0, utcnow()
        if len(failed) == total:
            report.status, report.error = JobStatus.FAILED.value, f"expected a case to segment, got {total} failures"
        else:
            report.status = JobStatus.SUCCEEDED.value


def _aggregate(classes: Sequence[str], entries: Sequence[ReportEntry]) -> dict[str, Any]:
    """Per-class and mean DSC/ASD over the scored cases, by the same rule as evaluations."""
    by_case: dict[str, dict[str, ClassMetrics]] = {}
    for entry in entries:
        by_case.setdefault(entry.case_id, {})[entry.class_name] = ClassMetrics(
            entry.dice, entry.asd, Status(entry.status)
        )
    accumulator = MetricAccumulator(classes, unit=ASD_UNIT)
    for case_id, metrics in sorted(by_case.items()):
        accumulator.add(CaseMetrics(case_id, {name: metrics[name] for name in classes[1:]}))
    aggregate = accumulator.aggregate()
    return {"per_class": aggregate["per_class"], "mean": aggregate["mean"], "rule": aggregate["rule"]}
