"""The evaluation runner: score a stored model on a dataset split and write the report (DSC/ASD per case and class).

The model directory is materialised from the store into a staging folder (``model.onnx`` + ``manifest.json``; the
segmenter re-checks the ONNX sha256 against the manifest), ``mona_core.inference.evaluate_model`` segments every
labelled case of the split, and the report gets one ``ReportEntry`` per case and foreground class, the summary
(per-class means, mean, the aggregation rule), the ASD unit and an overlay PNG per case. Idempotent: a succeeded
report is left alone, and a retry replaces the entries of an earlier attempt.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Final

from sqlalchemy import delete
from sqlalchemy.orm import Session

from mona_core.export.manifest import MANIFEST_FILE, MODEL_FILE
from mona_core.inference.evaluate import evaluate_model
from mona_core.inference.segmenter import Segmenter
from services.common.datasets import dataset_index
from services.common.db import session_scope
from services.common.models import JobStatus, Model, Report, ReportEntry, utcnow
from services.common.reports import BATCH, claim_report
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.worker.batch import segment_batch
from services.worker.recovery import ReportLease, lease_interval

logger = logging.getLogger(__name__)

SKIPPED: Final = "skipped"


def run_evaluation(settings: Settings, report_id: str) -> str:
    """Evaluate report ``report_id``'s model on its dataset split; returns the report's final status.

    The report is claimed first (not when it succeeded, nor while another worker's heartbeat on it is fresh) and its
    heartbeat is kept fresh from a daemon thread while the cases are scored, so that recovery can tell a lost worker.
    """
    if not _start(settings, report_id):
        return SKIPPED
    try:
        with ReportLease(settings.sqlalchemy_url, report_id, lease_interval(settings.stale_job_seconds)):
            store = ArtifactStore(settings.artifact_root)
            if _source(settings, report_id) == BATCH:
                _segment_batch(settings, store, report_id)
            else:
                _evaluate(settings, store, report_id)
    except Exception as exc:
        logger.exception("evaluation %s failed", report_id)
        _set(settings, report_id, status=JobStatus.FAILED.value, error=f"{type(exc).__name__}: {exc}")
        return JobStatus.FAILED.value
    return JobStatus.SUCCEEDED.value


def _start(settings: Settings, report_id: str) -> bool:
    with session_scope(settings.sqlalchemy_url) as session:
        claimed = claim_report(session, report_id, settings.stale_job_seconds)
    if not claimed:
        logger.info("evaluation %s is absent, done, or running elsewhere: nothing to do", report_id)
    return claimed


def _set(settings: Settings, report_id: str, **values: Any) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        report = session.get(Report, report_id)
        if report is None:
            return
        for name, value in values.items():
            setattr(report, name, value)
        if values.get("status") in (JobStatus.FAILED.value, JobStatus.SUCCEEDED.value):
            report.finished_at = utcnow()


def _source(settings: Settings, report_id: str) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.get_one(Report, report_id).source


def _segment_batch(settings: Settings, store: ArtifactStore, report_id: str) -> None:
    """A batch segmentation (``services.worker.batch``) with the report's model."""
    with session_scope(settings.sqlalchemy_url) as session:
        model = session.get_one(Model, session.get_one(Report, report_id).model_id)
        model_keys = (model.onnx_key, model.manifest_key)
    with store.staging_dir() as staging:
        segmenter = Segmenter(_model_dir(store, staging / "model", *model_keys), device="auto")
        segment_batch(settings, store, report_id, segmenter)


def _evaluate(settings: Settings, store: ArtifactStore, report_id: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        report = session.get(Report, report_id)
        model = session.get(Model, report.model_id) if report is not None else None
        if report is None or model is None or report.dataset_id is None or report.split is None:
            raise ValueError(f"expected a model, a dataset and a split on report {report_id}, got a partial report")
        index = dataset_index(session, store, report.dataset_id)
        split, model_keys = report.split, (model.onnx_key, model.manifest_key)
    with store.staging_dir() as staging:
        segmenter = Segmenter(_model_dir(store, staging / "model", *model_keys), device="auto")

        def on_case(case_id: str, number: int, total: int) -> None:
            _set(settings, report_id, progress=0.95 * number / total)

        result = evaluate_model(segmenter, index, split, out_dir=staging / "out", on_case=on_case)
        overlays = {
            case["case_id"]: store.copy_in(staging / "out" / "overlays" / f"{case['case_id']}.png", ".png").key
            for case in result["cases"]
        }
    with session_scope(settings.sqlalchemy_url) as session:
        _write_report(session, report_id, result, overlays)


def _model_dir(store: ArtifactStore, folder: Path, onnx_key: str, manifest_key: str) -> Path:
    """A model directory assembled from the store's content-addressed files."""
    folder.mkdir(parents=True)
    shutil.copyfile(store.path(onnx_key), folder / MODEL_FILE)
    shutil.copyfile(store.path(manifest_key), folder / MANIFEST_FILE)
    return folder


def _write_report(session: Session, report_id: str, result: dict[str, Any], overlays: dict[str, str]) -> None:
    """Replace the report's entries (a retry's included) and write the summary; the report succeeds."""
    session.execute(delete(ReportEntry).where(ReportEntry.report_id == report_id))
    for case in result["cases"]:
        for class_name, metrics in case["classes"].items():
            session.add(
                ReportEntry(
                    report_id=report_id,
                    case_id=case["case_id"],
                    class_name=class_name,
                    dice=metrics["dice"],
                    asd=metrics["asd"],
                    status=metrics["status"],
                )
            )
    report = session.get_one(Report, report_id)
    report.summary = {"per_class": result["per_class"], "mean": result["mean"], "rule": result["rule"]}
    report.unit, report.overlays = result["unit"], overlays
    report.status, report.progress, report.finished_at = JobStatus.SUCCEEDED.value, 1.0, utcnow()
