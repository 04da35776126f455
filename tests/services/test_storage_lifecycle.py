"""Storage lifecycle on real files and the real database: stale staging swept when the API starts and then
periodically; run directories of old failed/cancelled jobs and old ad-hoc masks removed by the worker's recovery
pass, while succeeded jobs, reports' masks and fresh files are kept."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from services.api.main import create_app
from services.common.db import session_scope
from services.common.models import Model, Report, Segmentation, utcnow
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.worker.recovery import RecoveryLoop
from tests.services.conftest import wait_for
from tests.services.test_worker import make_dataset, make_job

TWO_HOURS = 2 * 3600
OLD = utcnow() - timedelta(days=8)


def _aged(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_stale_staging_is_swept_at_api_start_and_fresh_staging_kept(
    service_settings: Settings, record_property: Callable[[str, object], None]
) -> None:
    store = ArtifactStore(service_settings.artifact_root)
    stale_file = _aged(store.staging_file(".nii.gz"), 1 << 20, TWO_HOURS)
    stale_dir = store.root / "tmp" / ("0" * 32)
    _aged(stale_dir / "inner" / "part.nii.gz", 1 << 20, TWO_HOURS)
    os.utime(stale_dir, (time.time() - TWO_HOURS,) * 2)
    os.utime(stale_dir / "inner", (time.time() - TWO_HOURS,) * 2)
    fresh = _aged(store.staging_file(".nii"), 1000, 10)
    busy_dir = store.root / "tmp" / ("1" * 32)  # an old folder still being written into: kept
    _aged(busy_dir / "new.nii.gz", 10, 0)
    os.utime(busy_dir, (time.time() - TWO_HOURS,) * 2)
    with TestClient(create_app(service_settings)):
        record_property(
            "staging: bytes left of uploads abandoned 2 h ago", _bytes_under(stale_file) + _bytes_under(stale_dir)
        )
        assert not stale_file.exists() and not stale_dir.exists()
        assert fresh.exists() and busy_dir.exists()


def test_staging_is_swept_periodically(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"staging_max_age_s": 2.0})
    store = ArtifactStore(settings.artifact_root)
    with TestClient(create_app(settings)):
        left = _aged(store.staging_file(".nii.gz"), 1000, 0)
        wait_for(lambda: not left.exists(), 10, interval=0.2, what="the periodic sweep to remove the staging file")


def _bytes_under(path: Path) -> int:
    """Bytes of the file, or of every file under the folder, at ``path`` (0 when it is gone)."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _job(settings: Settings, dataset_id: str, status: str, finished: datetime) -> tuple[str, Path]:
    job_id = make_job(settings, dataset_id, status=status, finished_at=finished)
    run_dir = ArtifactStore(settings.artifact_root).run_dir(job_id)
    _aged(run_dir / "checkpoints" / "last.pt", 1 << 20, 0)
    return job_id, run_dir


def _segmentation(settings: Settings, model_id: str, mask_key: str, created: datetime, report: str | None) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        row = Segmentation(
            model_id=model_id, input_sha256="0" * 64, mask_key=mask_key, geometry={}, seconds=0.1, report_id=report
        )
        row.created_at = created
        session.add(row)
        session.flush()
        return row.id


def _model(settings: Settings, job_id: str) -> str:
    store = ArtifactStore(settings.artifact_root)
    key = store.put_bytes(os.urandom(64), ".json").key
    with session_scope(settings.sqlalchemy_url) as session:
        model = Model(job_id=job_id, onnx_key=key, manifest_key=key, onnx_sha256="0" * 64, classes=["a"])
        session.add(model)
        model.preset, model.size, model.metrics = "mri", 32, {}
        session.flush()
        return model.id


def test_retention_removes_old_failed_runs_and_ad_hoc_masks_only(
    service_settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    settings, store = service_settings, ArtifactStore(service_settings.artifact_root)
    dataset_id = make_dataset(settings, tmp_path, patients=2, frames=1)
    failed, cancelled = (_job(settings, dataset_id, status, OLD) for status in ("failed", "cancelled"))
    succeeded, recent = _job(settings, dataset_id, "succeeded", OLD), _job(settings, dataset_id, "failed", utcnow())
    model_id = _model(settings, succeeded[0])
    alone, shared, reported = (store.put_bytes(os.urandom(1 << 16), ".nii.gz").key for _ in range(3))
    gone = _segmentation(settings, model_id, alone, OLD, None)
    old_shared = _segmentation(settings, model_id, shared, OLD, None)
    _segmentation(settings, model_id, shared, utcnow(), None)
    with_report = _segmentation(settings, model_id, reported, OLD, "f" * 32)

    RecoveryLoop(settings).run_once()

    left = sum(_bytes_under(run) for run in (failed[1], cancelled[1])) + _bytes_under(store.path(alone))
    record_property("retention: bytes left of expired failed/cancelled runs and ad-hoc masks", left)
    assert not failed[1].exists() and not cancelled[1].exists()
    assert succeeded[1].exists() and recent[1].exists()
    assert not store.path(alone).exists() and store.path(shared).exists() and store.path(reported).exists()
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.get(Segmentation, gone) is None and session.get(Segmentation, old_shared) is None
        assert session.get(Segmentation, with_report) is not None


def test_retention_keeps_the_cases_of_a_batch_segmentation(service_settings: Settings, tmp_path: Path) -> None:
    """A batch's per-case rows have no report of their own (the batch is the report): they are not ad hoc."""
    settings, store = service_settings, ArtifactStore(service_settings.artifact_root)
    job_id, _ = _job(settings, make_dataset(settings, tmp_path, patients=2, frames=1), "succeeded", OLD)
    model_id = _model(settings, job_id)
    mask = store.put_bytes(os.urandom(1 << 12), ".nii.gz").key
    with session_scope(settings.sqlalchemy_url) as session:
        batch = Report(source="batch", model_id=model_id, status="succeeded")
        session.add(batch)
        session.flush()
        row = Segmentation(
            model_id=model_id,
            batch_id=batch.id,
            case_id="c1",
            input_sha256="0" * 64,
            mask_key=mask,
            geometry={},
            seconds=0.1,
            created_at=OLD,
        )
        session.add(row)
        session.flush()
        row_id = row.id
    RecoveryLoop(settings).run_once()
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.get(Segmentation, row_id) is not None
    assert store.path(mask).exists()
