"""Retention: what failed or was thrown away is deleted after ``MONA_RETENTION_DAYS``, by the workers' periodic
recovery pass (``services.worker.recovery.RecoveryLoop``).

- the run directory (checkpoints, metrics) of a job that finished ``failed`` or ``cancelled`` that long ago;
  a succeeded job's run directory is kept (a fine-tuning job may start from it);
- an ad-hoc segmentation (``POST /v1/models/{id}/segment`` without a label, so part of no report) older than that:
  its row and its mask, unless the same content-addressed mask is still used by another segmentation or a case;
- stored objects that no row references and that are older than ``ORPHAN_GRACE_S`` (what a crash between a
  deletion's commit and its unlinking left, or an object a deletion kept because it was fresh).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common.deletion import delete_segmentations, sweep_orphans, unreferenced_objects
from services.common.models import JobStatus, Segmentation, TrainingJob, utcnow
from services.common.settings import Settings
from services.common.storage import ArtifactStore, StorageError

logger = logging.getLogger(__name__)


ORPHAN_GRACE_S = 24 * 3600.0
"""Unreferenced objects younger than this are left alone by the sweep: an archive upload may still be storing its
cases (its rows are committed once, at the end)."""


@dataclass(frozen=True)
class Swept:
    run_dirs: int = 0
    masks: int = 0
    orphans: int = 0
    bytes_freed: int = 0


def apply_retention(settings: Settings, engine: Engine) -> Swept:
    """One retention pass; a database or filesystem error is logged and the pass retried next time."""
    store = ArtifactStore(settings.artifact_root)
    cutoff = utcnow() - timedelta(days=settings.retention_days)
    try:
        with Session(engine) as session, session.begin():
            runs = _expired_run_dirs(session, store, cutoff)
            count, unused = _expired_segmentations(session, store, cutoff)
        masks = count, _unlink(unused)  # after the commit: a failed commit leaves no row without its mask
        with Session(engine) as session:
            orphans = sweep_orphans(session, store, max(settings.object_grace_s, ORPHAN_GRACE_S))
    except (SQLAlchemyError, OSError, StorageError) as exc:
        logger.warning("retention pass failed (retrying later): %s", exc)
        return Swept()
    freed = runs[1] + masks[1] + orphans.bytes_freed
    swept = Swept(run_dirs=runs[0], masks=masks[0], orphans=orphans.objects, bytes_freed=freed)
    if swept.run_dirs or swept.masks or swept.orphans:
        logger.info("retention: removed %s (older than %g days)", swept, settings.retention_days)
    return swept


def _expired_run_dirs(session: Session, store: ArtifactStore, cutoff: datetime) -> tuple[int, int]:
    """Remove the run directories of jobs failed or cancelled before ``cutoff``; (count, bytes)."""
    ended = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)
    query = select(TrainingJob.id).where(TrainingJob.status.in_(ended), TrainingJob.finished_at < cutoff)
    removed, freed = 0, 0
    for job_id in session.scalars(query):
        run_dir = store.run_dir(job_id)
        if run_dir.is_dir():
            freed += sum(path.stat().st_size for path in run_dir.rglob("*") if path.is_file())
            shutil.rmtree(run_dir)
            removed += 1
    return removed, freed


def _expired_segmentations(session: Session, store: ArtifactStore, cutoff: datetime) -> tuple[int, list[Path]]:
    """Delete ad-hoc segmentations made before ``cutoff`` (no report, not a case of a batch); (count, their files
    that no other row uses), through the same deletion as ``DELETE /v1/segmentations/{id}``."""
    ad_hoc = (Segmentation.report_id.is_(None), Segmentation.batch_id.is_(None), Segmentation.created_at < cutoff)
    expired = list(session.scalars(select(Segmentation).where(*ad_hoc)))
    if not expired:
        return 0, []
    unused = unreferenced_objects(session, delete_segmentations(session, expired))
    return len(expired), [store.path(key) for key in sorted(unused)]


def _unlink(paths: list[Path]) -> int:
    """Remove ``paths`` (already gone is fine); the bytes freed."""
    freed = 0
    for path in paths:
        if path.is_file():
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
    return freed
