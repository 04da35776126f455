"""The training job runner: claim a job by id, train (or resume) with ``mona_core``, export, record everything.

Stages and progress: ``loading`` (claim, dataset index, labelled selection), ``train`` (progress 0 to 0.95),
``export`` (ONNX + parity check, the last 5 %), then ``succeeded`` with a ``Model`` row, which exists only when the
parity check passed. A resumed attempt continues from ``runs/<job id>/checkpoints/last.pt`` (``train`` does that),
reusing the labelled patients stored on the job. Any error fails the job with ``"<ExceptionType>: message"``; a
job is never left running by an error this process survives (a killed process is ``recovery``'s business).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import torch
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mona_core.data.dataset import DatasetIndex
from mona_core.data.slicing import image_to_slices
from mona_core.data.splits import LabelledSelection, select_labelled
from mona_core.export.manifest import MANIFEST_FILE, MODEL_FILE
from mona_core.export.onnx_export import ExportResult, export_checkpoint
from mona_core.io import read_image
from mona_core.training.checkpoint import LAST, checkpoint_for_export, load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.progress import ProgressEvent
from mona_core.training.trainer import train
from services.common.datasets import dataset_index
from services.common.db import session_scope
from services.common.jobs import (
    add_metric,
    append_log,
    claim_job,
    fail_job,
    finish_job,
    prune_metrics,
    record_progress,
)
from services.common.models import DEFAULT_PROJECT, TERMINAL, JobStatus, Model, TrainingJob
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.common.webhooks import notify_job_finished
from services.worker.recovery import JobLease, lease_interval
from services.worker.study import run_study_job

logger = logging.getLogger(__name__)

TRAIN_SHARE: Final = 0.95
"""Training is the first 95 % of a job's progress; export the last 5 %."""
REAL_SLICES: Final = 8
SKIPPED: Final = "skipped"
LOST: Final = "lost"
MAX_BUFFERED_METRICS: Final = 100_000
"""Metric rows kept in memory while the database is unreachable (the oldest are dropped past it, with a warning)."""


@dataclass(frozen=True)
class JobSpec:
    """What the runner needs from the job row, as plain values (no ORM object outlives its session)."""

    id: str
    dataset_id: str
    config: TrainConfig
    labelled_patients: int | None
    labelled_ratio: float | None
    selection: dict[str, Any] | None
    attempt: int
    cancel_requested: bool


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def choose_device(requested: str) -> str:
    """``auto`` -> CUDA when this worker has it, else CPU; ``cuda`` on a CPU-only worker is an error."""
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise RuntimeError("expected a CUDA GPU on this worker for device 'cuda', got none (use 'auto' or 'cpu')")
    if requested == "auto":
        return "cuda" if available else "cpu"
    return requested


def run_training_job(settings: Settings, job_id: str) -> str:
    """Run (or resume) training job ``job_id``; returns the status it ended in, or ``skipped`` / ``lost``."""
    me = worker_name()
    if not _claim(settings, job_id, me):
        return SKIPPED
    store = ArtifactStore(settings.artifact_root)
    interval = lease_interval(settings.stale_job_seconds)
    with JobLease(settings.sqlalchemy_url, job_id, me, interval) as lease:
        try:
            ended = _run_claimed(settings, store, job_id, me, lease)
        except Exception as exc:
            logger.exception("training job %s failed", job_id)
            with session_scope(settings.sqlalchemy_url) as session:
                fail_job(session, job_id, me, f"{type(exc).__name__}: {exc}")
            ended = JobStatus.FAILED.value
    if ended in {status.value for status in TERMINAL}:
        notify_job_finished(settings, job_id)
    return ended


def _claim(settings: Settings, job_id: str, me: str) -> bool:
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            logger.warning("no training job %s: nothing to do", job_id)
            return False
        if job.status in TERMINAL:
            logger.info("training job %s is already %s: nothing to do", job_id, job.status)
            return False
        if not claim_job(session, job_id, me, settings.stale_job_seconds):
            logger.info("training job %s is running on %s (fresh heartbeat): not taking it", job_id, job.worker)
            return False
        attempt = session.scalar(select(TrainingJob.attempts).where(TrainingJob.id == job_id))
        append_log(session, job_id, f"claimed by {me} (attempt {attempt})")
    return True


def _run_claimed(settings: Settings, store: ArtifactStore, job_id: str, me: str, lease: JobLease) -> str:
    if _kind(settings, job_id) == "study":
        attempt = _attempt(settings, job_id)
        writer = ProgressWriter(settings.sqlalchemy_url, job_id, me, attempt)
        return run_study_job(settings, store, job_id, me, lease, writer)
    spec = _load_spec(settings, job_id)
    if spec.cancel_requested:
        return _stopped(settings, job_id, me, lease, step=0)
    config = replace(spec.config, device=choose_device(spec.config.device))
    with session_scope(settings.sqlalchemy_url) as session:
        index = dataset_index(session, store, spec.dataset_id)
        selection = _selection(session, spec, index, me)
        record_progress(session, job_id, me, {"device": config.device, "total_iterations": config.iterations})
    run_dir = store.run_dir(job_id)
    _note_resume(settings, job_id, me, run_dir)
    writer = ProgressWriter(settings.sqlalchemy_url, job_id, me, spec.attempt)
    result = train(config, index, selection, run_dir, progress=writer, should_stop=lease.should_stop)
    if not writer.flush():
        logger.warning("training job %s: %d metric rows still unwritten after training", job_id, writer.buffered)
    if result.stopped:
        return _stopped(settings, job_id, me, lease, step=result.steps)
    _log(settings, job_id, f"training done at step {result.steps} (best {result.best})")
    return _export_and_finish(settings, store, job_id, me, index, result.best)


def _kind(settings: Settings, job_id: str) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.get_one(TrainingJob, job_id).kind


def _attempt(settings: Settings, job_id: str) -> int:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.get_one(TrainingJob, job_id).attempts


def _load_spec(settings: Settings, job_id: str) -> JobSpec:
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise LookupError(f"expected training job {job_id} to exist, got none")
        return JobSpec(
            id=job.id,
            dataset_id=job.dataset_id,
            config=TrainConfig.from_dict(dict(job.config)),
            labelled_patients=job.labelled_patients,
            labelled_ratio=job.labelled_ratio,
            selection=job.selection,
            attempt=job.attempts,
            cancel_requested=job.cancel_requested,
        )


def _selection(session: Session, spec: JobSpec, index: DatasetIndex, me: str) -> LabelledSelection:
    """The job's labelled patients: drawn once (seed 0) and stored, so a resumed attempt trains on the same."""
    if spec.selection is not None:
        selection, origin = LabelledSelection.from_dict(spec.selection), "stored"
    else:
        selection = select_labelled(
            index.patients("train"),
            n_patients=spec.labelled_patients,
            ratio=spec.labelled_ratio,
            seed=0,
            eligible=index.fully_labelled_patients("train"),
        )
        origin = "drawn"
        record_progress(session, spec.id, me, {"selection": selection.to_dict()})
    labelled = ", ".join(selection.labelled)
    append_log(session, spec.id, f"labelled patients: {labelled} ({len(selection.unlabelled)} unlabelled; {origin})")
    return selection


def _note_resume(settings: Settings, job_id: str, me: str, run_dir: Path) -> None:
    """On a resumed attempt: log the step, and drop metric rows past it (the lost attempt's, to be redone)."""
    last = run_dir / "checkpoints" / LAST
    if not last.is_file():
        return
    step = int(load_checkpoint(last)["step"])
    with session_scope(settings.sqlalchemy_url) as session:
        dropped = prune_metrics(session, job_id, after_step=step)
        record_progress(session, job_id, me, {"iteration": step})
        append_log(session, job_id, f"resuming from step {step} (dropped {dropped} metric rows past it)")


def _stopped(settings: Settings, job_id: str, me: str, lease: JobLease, step: int) -> str:
    if lease.lost and not lease.cancel_requested:
        logger.warning("training job %s was taken from %s at step %d: leaving it", job_id, me, step)
        return LOST
    with session_scope(settings.sqlalchemy_url) as session:
        if finish_job(session, job_id, me, JobStatus.CANCELLED, stage="cancelled"):
            append_log(session, job_id, f"cancelled at step {step}")
    logger.info("training job %s cancelled at step %d", job_id, step)
    return JobStatus.CANCELLED.value


def _log(settings: Settings, job_id: str, message: str, level: str = "INFO") -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        append_log(session, job_id, message, level)


class ProgressWriter:
    """``train``'s progress hook: a ``JobMetric`` row per event; the job row at most once per ``min_interval``.

    Validation events and the last step are always written to the job row. While the database is unreachable
    the metric rows wait in memory (up to ``max_buffered``, oldest dropped first) and go in with the next write
    that succeeds, in the same transaction, so each step is stored once. The run goes on meanwhile (a lasting
    outage stops the heartbeat, and the lease then stops the run).
    """

    def __init__(
        self,
        url: str,
        job_id: str,
        worker: str,
        attempt: int,
        min_interval: float = 1.0,
        max_buffered: int = MAX_BUFFERED_METRICS,
    ) -> None:
        self.url, self.job_id, self.worker, self.attempt = url, job_id, worker, attempt
        self.min_interval = min_interval
        self._last_write = -math.inf
        self._pending: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max_buffered)
        self._dropped = 0

    @property
    def buffered(self) -> int:
        """Metric rows waiting for the database."""
        return len(self._pending)

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        due = now - self._last_write >= self.min_interval or event.val_dice is not None or event.step >= event.total
        losses = {name: _finite(value) for name, value in event.losses.items()}
        self._buffer(event.step, self._metric(event, losses))
        if self._write(_status(event, losses) if due else None) and due:
            self._last_write = now

    def flush(self) -> bool:
        """Write the buffered metric rows now; True when none are left waiting."""
        return self._write(None)

    def _buffer(self, step: int, metric: dict[str, Any]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
            logger.warning(
                "progress buffer of job %s is full: dropped the oldest row (%d so far)", self.job_id, self._dropped
            )
        self._pending.append((step, metric))

    def _write(self, status: dict[str, Any] | None) -> bool:
        """One transaction: every buffered metric row, then ``status`` on the job row; False (rows kept) on error."""
        rows = list(self._pending)
        try:
            with session_scope(self.url) as session:
                for step, metric in rows:
                    add_metric(session, self.job_id, step, metric)
                if status is not None:
                    record_progress(session, self.job_id, self.worker, status)
        except SQLAlchemyError as exc:
            logger.warning("progress of job %s not recorded yet (%d rows buffered): %s", self.job_id, len(rows), exc)
            return False
        for _ in rows:
            self._pending.popleft()
        if len(rows) > 1:
            logger.info("progress of job %s: wrote %d buffered metric rows", self.job_id, len(rows))
        return True

    def _metric(self, event: ProgressEvent, losses: dict[str, float | None]) -> dict[str, Any]:
        metric = {"step": event.step, **losses, "lr": event.lr, "attempt": self.attempt}
        return metric if event.val_dice is None else {**metric, "val_dice": event.val_dice}


def _status(event: ProgressEvent, losses: dict[str, float | None]) -> dict[str, Any]:
    return {
        "stage": event.stage,
        "progress": event.fraction * TRAIN_SHARE,
        "iteration": event.step,
        "total_iterations": event.total,
        "eta_s": event.eta_s,
        "latest_losses": losses,
        "best_val_dice": event.best_val_dice,
    }


def _finite(value: float) -> float | None:
    """JSON columns (Postgres) refuse NaN and infinities: a diverged loss is stored as null."""
    return value if math.isfinite(value) else None


def _export_and_finish(
    settings: Settings, store: ArtifactStore, job_id: str, me: str, index: DatasetIndex, best: dict[str, Any] | None
) -> str:
    """Export the best checkpoint (parity-checked), publish it as a ``Model`` and mark the job succeeded."""
    with session_scope(settings.sqlalchemy_url) as session:
        record_progress(session, job_id, me, {"stage": "export", "progress": TRAIN_SHARE, "eta_s": None})
        model_id = session.scalar(select(Model.id).where(Model.job_id == job_id))
    if model_id is None:
        model_id = _publish_model(settings, store, job_id, index, best)
    with session_scope(settings.sqlalchemy_url) as session:
        done = finish_job(session, job_id, me, JobStatus.SUCCEEDED, stage="done", progress=1.0, model_id=model_id)
        if not done:
            logger.warning("training job %s was no longer ours when it finished", job_id)
    return JobStatus.SUCCEEDED.value


def _publish_model(
    settings: Settings, store: ArtifactStore, job_id: str, index: DatasetIndex, best: dict[str, Any] | None
) -> str:
    with store.staging_dir() as staging:
        result = export_run(store.run_dir(job_id), index, staging / "model")
        onnx = store.copy_in(result.model_dir / MODEL_FILE, ".onnx")
        manifest_file = store.copy_in(result.model_dir / MANIFEST_FILE, ".json")
    manifest = result.manifest
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get(TrainingJob, job_id)
        model = Model(
            job_id=job_id,
            project=job.project if job is not None else DEFAULT_PROJECT,
            onnx_key=onnx.key,
            manifest_key=manifest_file.key,
            onnx_sha256=onnx.sha256,
            classes=list(manifest.classes),
            preset=manifest.preset,
            size=manifest.size,
            postprocess=manifest.postprocess,
            metrics={"best": best, "parity": manifest.parity},
        )
        session.add(model)
        session.flush()
        diff = manifest.parity["max_abs_diff_random"]
        append_log(
            session, job_id, f"exported model {model.id} (onnx {onnx.sha256[:12]}, parity max |diff| {diff:.2e})"
        )
        return model.id


def export_run(run_dir: Path, index: DatasetIndex, out_dir: Path) -> ExportResult:
    """Export a run's best (else last) checkpoint, parity-checked on real slices of its first val (else train) case."""
    checkpoint = load_checkpoint(checkpoint_for_export(run_dir))
    data = checkpoint["data"]
    cases = index.cases_in("val") or index.cases_in("train")
    real = None
    if cases:
        slices = image_to_slices(read_image(cases[0].image).array, str(data["preset"]), int(data["size"]))
        real = slices[:REAL_SLICES]
    return export_checkpoint(checkpoint, out_dir, real_inputs=real)
