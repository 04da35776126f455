"""The worker's runners (training, export, evaluation) on phantom datasets, and one job through a real worker."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case
from mona_core.training.config import StudyConfig, TrainConfig
from services.common.datasets import dataset_index
from services.common.db import session_scope
from services.common.models import (
    Case,
    Dataset,
    JobLog,
    JobMetric,
    JobStatus,
    Model,
    Report,
    ReportEntry,
    TrainingJob,
)
from services.common.settings import Settings
from services.common.storage import ArtifactStore, sha256_of
from services.common.tasks import make_celery, send_train
from services.worker.evaluation import run_evaluation
from services.worker.training import SKIPPED, run_training_job
from tests.services.conftest import WorkerProcess, purge_job_queues, wait_for

SHAPE = (6, 64, 72)
FAST = TrainConfig(iterations=4, size=32, batch_size=2, val_every=2, checkpoint_every=2, log_every=1, device="cpu")


def make_dataset(settings: Settings, tmp_path: Path, patients: int = 4, frames: int = 2, val: int = 1) -> str:
    """A phantom dataset in the store: ``patients`` x ``frames`` labelled cases; the last ``val`` patients in val."""
    store = ArtifactStore(settings.artifact_root)
    folder = tmp_path / f"phantoms-{uuid.uuid4().hex[:6]}"
    with session_scope(settings.sqlalchemy_url) as session:
        dataset = Dataset(name="phantoms", preset="mri", classes=list(PHANTOM_CLASSES))
        session.add(dataset)
        session.flush()
        for patient in range(1, patients + 1):
            for frame in range(1, frames + 1):
                case_id = f"patient{patient:03d}_frame{frame:02d}"
                image, label = write_phantom_case(
                    folder / f"{case_id}.nii.gz", folder / f"{case_id}_label.nii.gz", 10 * patient + frame, SHAPE
                )
                assert label is not None
                stored_image, stored_label = store.copy_in(image, ".nii.gz"), store.copy_in(label, ".nii.gz")
                session.add(
                    Case(
                        dataset_id=dataset.id,
                        case_id=case_id,
                        patient_id=f"patient{patient:03d}",
                        split="val" if patient > patients - val else "train",
                        role="labelled",
                        image_key=stored_image.key,
                        image_sha256=stored_image.sha256,
                        label_key=stored_label.key,
                        label_sha256=stored_label.sha256,
                        geometry={},
                    )
                )
        return dataset.id


def make_job(settings: Settings, dataset_id: str, config: TrainConfig = FAST, **fields: Any) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        job = TrainingJob(kind=config.method, dataset_id=dataset_id, config=config.to_dict(), **fields)
        session.add(job)
        session.flush()
        return job.id


def load_job(settings: Settings, job_id: str) -> TrainingJob:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.get_one(TrainingJob, job_id)


def log_lines(settings: Settings, job_id: str) -> list[tuple[str, str]]:
    with session_scope(settings.sqlalchemy_url) as session:
        rows = session.scalars(select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)).all()
        return [(row.level, row.message) for row in rows]


def metric_rows(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    with session_scope(settings.sqlalchemy_url) as session:
        rows = session.scalars(select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id)).all()
        return [dict(row.values) for row in rows]


def set_cancel(settings: Settings, job_id: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        session.get_one(TrainingJob, job_id).cancel_requested = True


def test_dataset_index_uses_uploaded_splits(service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = make_dataset(service_settings, tmp_path, patients=3, frames=1, val=1)
    with session_scope(service_settings.sqlalchemy_url) as session:
        index = dataset_index(session, ArtifactStore(service_settings.artifact_root), dataset_id)
    assert index.splits == {"train": ("patient001_frame01", "patient002_frame01"), "val": ("patient003_frame01",)}
    assert index.classes == PHANTOM_CLASSES and index.preset == "mri"
    assert all(case.image.is_file() and case.label is not None and case.label.is_file() for case in index.cases)


def test_dataset_index_derives_a_patient_level_val_split(service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = make_dataset(service_settings, tmp_path, patients=4, frames=2, val=0)
    store = ArtifactStore(service_settings.artifact_root)
    with session_scope(service_settings.sqlalchemy_url) as session:
        first, second = dataset_index(session, store, dataset_id), dataset_index(session, store, dataset_id)
    assert first.splits == second.splits
    assert len(first.patients("val")) == 1 and len(first.cases_in("val")) == 2
    assert not set(first.patients("val")) & set(first.patients("train"))
    assert len(first.cases_in("train")) == 6


@pytest.fixture()
def trained_job(service_settings: Settings, tmp_path: Path) -> tuple[str, str]:
    """(dataset id, job id) of a 4-iteration job run to success in this process."""
    dataset_id = make_dataset(service_settings, tmp_path)
    job_id = make_job(service_settings, dataset_id, labelled_patients=2)
    assert run_training_job(service_settings, job_id) == JobStatus.SUCCEEDED.value
    return dataset_id, job_id


def test_training_job_succeeds_with_a_parity_checked_model(
    service_settings: Settings, trained_job: tuple[str, str]
) -> None:
    _, job_id = trained_job
    job = load_job(service_settings, job_id)
    assert (job.status, job.stage, job.progress, job.iteration, job.attempts) == ("succeeded", "done", 1.0, 4, 1)
    assert job.finished_at is not None and job.started_at is not None and job.error is None and job.device == "cpu"
    assert job.selection is not None and len(job.selection["labelled"]) == 2
    assert job.latest_losses is not None and job.best_val_dice is not None
    store = ArtifactStore(service_settings.artifact_root)
    with session_scope(service_settings.sqlalchemy_url) as session:
        model = session.get_one(Model, job.model_id)
    assert sha256_of(store.path(model.onnx_key)) == model.onnx_sha256
    assert json.loads(store.path(model.manifest_key).read_text())["onnx_sha256"] == model.onnx_sha256
    assert model.classes == list(PHANTOM_CLASSES) and (model.preset, model.size) == ("mri", 32)
    assert model.metrics["parity"]["max_abs_diff_real"] is not None and model.metrics["best"]["step"] in (2, 4)
    metrics = metric_rows(service_settings, job_id)
    assert [row["step"] for row in metrics] == [1, 2, 3, 4]
    assert ["val_dice" in row for row in metrics] == [False, True, False, True]
    messages = " | ".join(message for _, message in log_lines(service_settings, job_id))
    for expected in ("claimed by", "labelled patients", "training done", "exported model"):
        assert expected in messages


def test_a_finished_job_is_not_run_again(service_settings: Settings, trained_job: tuple[str, str]) -> None:
    _, job_id = trained_job
    before, logs = load_job(service_settings, job_id), len(log_lines(service_settings, job_id))
    assert run_training_job(service_settings, job_id) == SKIPPED
    after = load_job(service_settings, job_id)
    assert (after.attempts, after.model_id, after.finished_at) == (before.attempts, before.model_id, before.finished_at)
    assert len(log_lines(service_settings, job_id)) == logs


def test_a_retry_after_export_reuses_the_model(service_settings: Settings, trained_job: tuple[str, str]) -> None:
    """A worker lost between publishing the model and finishing the job: the retry finishes with that model."""
    _, job_id = trained_job
    model_id = load_job(service_settings, job_id).model_id
    with session_scope(service_settings.sqlalchemy_url) as session:
        job = session.get_one(TrainingJob, job_id)
        job.status, job.model_id, job.finished_at = "queued", None, None
    assert run_training_job(service_settings, job_id) == JobStatus.SUCCEEDED.value
    job = load_job(service_settings, job_id)
    assert (job.status, job.attempts, job.model_id, job.iteration) == ("succeeded", 2, model_id, 4)
    with session_scope(service_settings.sqlalchemy_url) as session:
        assert len(session.scalars(select(Model).where(Model.job_id == job_id)).all()) == 1
    assert [row["step"] for row in metric_rows(service_settings, job_id)] == [1, 2, 3, 4]


def test_cancel_before_start(service_settings: Settings, tmp_path: Path) -> None:
    job_id = make_job(service_settings, make_dataset(service_settings, tmp_path, patients=2, frames=1))
    set_cancel(service_settings, job_id)
    assert run_training_job(service_settings, job_id) == JobStatus.CANCELLED.value
    job = load_job(service_settings, job_id)
    assert (job.status, job.model_id, job.iteration) == ("cancelled", None, 0) and job.finished_at is not None


def test_cancel_while_running(service_settings: Settings, tmp_path: Path) -> None:
    long_run = TrainConfig(iterations=2000, size=32, batch_size=2, val_every=1000, checkpoint_every=1000, device="cpu")
    job_id = make_job(service_settings, make_dataset(service_settings, tmp_path, patients=2, frames=1), long_run)

    def cancel_once_training() -> None:
        wait_for(lambda: load_job(service_settings, job_id).iteration >= 3, timeout=60, interval=0.1)
        set_cancel(service_settings, job_id)

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    assert run_training_job(service_settings, job_id) == JobStatus.CANCELLED.value
    canceller.join()
    job = load_job(service_settings, job_id)
    assert job.status == "cancelled" and job.model_id is None and 3 <= job.iteration < 2000
    assert (ArtifactStore(service_settings.artifact_root).run_dir(job_id) / "checkpoints" / "last.pt").is_file()
    assert any(message.startswith("cancelled at step") for _, message in log_lines(service_settings, job_id))


def test_corrupted_case_file_fails_the_job(service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = make_dataset(service_settings, tmp_path, patients=2, frames=1)
    store = ArtifactStore(service_settings.artifact_root)
    with session_scope(service_settings.sqlalchemy_url) as session:
        keys = session.scalars(select(Case.image_key).where(Case.dataset_id == dataset_id)).all()
    for key in keys:
        store.path(key).write_bytes(b"not a nifti file")
    job_id = make_job(service_settings, dataset_id)
    assert run_training_job(service_settings, job_id) == JobStatus.FAILED.value
    job = load_job(service_settings, job_id)
    assert job.status == "failed" and job.model_id is None and job.finished_at is not None
    assert job.error is not None and job.error.split(":")[0].isidentifier() and len(job.error) > 20
    assert ("ERROR", job.error) in log_lines(service_settings, job_id)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only worker's answer to device cuda")
def test_cuda_job_on_a_cpu_worker_fails_clearly(service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = make_dataset(service_settings, tmp_path, patients=2, frames=1)
    job_id = make_job(service_settings, dataset_id, TrainConfig(iterations=2, size=32, device="cuda"))
    assert run_training_job(service_settings, job_id) == JobStatus.FAILED.value
    job = load_job(service_settings, job_id)
    assert job.status == "failed" and job.error is not None and "CUDA" in job.error


def test_evaluation_writes_every_case_and_class(service_settings: Settings, trained_job: tuple[str, str]) -> None:
    dataset_id, job_id = trained_job
    model_id = load_job(service_settings, job_id).model_id
    assert model_id is not None
    with session_scope(service_settings.sqlalchemy_url) as session:
        report = Report(source="evaluation", model_id=model_id, dataset_id=dataset_id, split="val")
        session.add(report)
        session.flush()
        report_id = report.id
    assert run_evaluation(service_settings, report_id) == JobStatus.SUCCEEDED.value
    _check_report(service_settings, report_id)
    assert run_evaluation(service_settings, report_id) == "skipped"
    with session_scope(service_settings.sqlalchemy_url) as session:
        session.get_one(Report, report_id).status = "failed"  # a retry rewrites the entries, no duplicates
    assert run_evaluation(service_settings, report_id) == JobStatus.SUCCEEDED.value
    _check_report(service_settings, report_id)


def _check_report(settings: Settings, report_id: str) -> None:
    store = ArtifactStore(settings.artifact_root)
    with session_scope(settings.sqlalchemy_url) as session:
        report = session.get_one(Report, report_id)
        entries = session.scalars(select(ReportEntry).where(ReportEntry.report_id == report_id)).all()
        assert (report.status, report.progress, report.error) == ("succeeded", 1.0, None)
        assert report.summary is not None and set(report.summary) == {"per_class", "mean", "rule"}
        assert report.unit is not None and report.overlays is not None
        pairs = {(entry.case_id, entry.class_name) for entry in entries}
    val_cases = {"patient004_frame01", "patient004_frame02"}
    assert len(entries) == 6 and pairs == {(case, name) for case in val_cases for name in PHANTOM_CLASSES[1:]}
    assert set(report.overlays) == val_cases
    assert all(store.path(key).is_file() for key in report.overlays.values())


def test_real_worker_runs_a_training_job(service_settings: Settings, tmp_path: Path, worker: WorkerProcess) -> None:
    job_id = make_job(service_settings, make_dataset(service_settings, tmp_path, patients=3, frames=1))
    purge_job_queues(service_settings)
    send_train(make_celery(service_settings), job_id)
    wait_for(lambda: load_job(service_settings, job_id).status in ("succeeded", "failed"), timeout=180, what="the job")
    job = load_job(service_settings, job_id)
    assert (job.status, job.error, job.attempts) == ("succeeded", None, 1), worker.log.read_text()[-3000:]
    assert job.worker is not None and job.model_id is not None


@pytest.mark.parametrize(
    ("kind", "loss"),
    [
        ("mean_teacher", "loss_consistency"),
        ("cps", "loss_cps"),
        ("bcp", "loss_inward"),
        ("pretrain", "loss_inst_global"),
        ("mona", "loss_contrast"),
    ],
)
def test_semi_supervised_kinds_run_as_jobs(service_settings: Settings, tmp_path: Path, kind: str, loss: str) -> None:
    dataset_id = make_dataset(service_settings, tmp_path)
    config = FAST.with_overrides(
        method=kind, iterations=4, batch_size=4, num_queries=32, num_negatives=64, local_views=4
    )
    job_id = make_job(service_settings, dataset_id, config, labelled_patients=1)
    run_training_job(service_settings, job_id)
    job = load_job(service_settings, job_id)
    assert job.status == "succeeded" and job.model_id is not None, job.error
    assert job.latest_losses is not None and loss in job.latest_losses
    assert [row["step"] for row in metric_rows(service_settings, job_id)] == [1, 2, 3, 4]


def test_a_study_job_stores_its_report_and_plot(service_settings: Settings, tmp_path: Path, api: Any) -> None:
    dataset_id = make_dataset(service_settings, tmp_path)
    study = StudyConfig(methods=("supervised", "mean_teacher"), ratios=(0.34,), base=FAST.with_overrides(batch_size=4))
    response = api.post(
        "/v1/jobs",
        json={
            "kind": "study",
            "dataset_id": dataset_id,
            "config": {
                "methods": list(study.methods),
                "ratios": [0.34],
                **{
                    k: v
                    for k, v in study.base.to_dict().items()
                    if k in ("iterations", "size", "batch_size", "val_every")
                },
            },
            "device": "cpu",
        },
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["total_iterations"] == 2 * FAST.iterations
    assert run_training_job(service_settings, job_id) == JobStatus.SUCCEEDED.value
    job = load_job(service_settings, job_id)
    assert job.model_id is None and job.result is not None and len(job.result["cells"]) == 2
    report = api.get(f"/v1/jobs/{job_id}/study").json()
    assert [cell["method"] for cell in report["cells"]] == ["supervised", "mean_teacher"]
    assert report["study"]["base"]["batch_size"] == 4 and report["study"]["ratios"] == [0.34]
    best_val = report["cells"][0]["scores"]["best_val"]
    assert (best_val["checkpoint"], best_val["split"]) == ("best.pt", "val") and 0 <= best_val["mean"]["dice"] <= 1
    study_config = api.get(f"/v1/jobs/{job_id}").json()["config"]
    assert study_config["methods"] == ["supervised", "mean_teacher"] and study_config["base"]["batch_size"] == 4
    assert "| 0.34 (1 pt) | supervised |" in api.get(f"/v1/jobs/{job_id}/study.md").text
    assert api.get(f"/v1/jobs/{job_id}/study.png").content[:4] == b"\x89PNG"
    assert api.get(f"/v1/jobs/{make_job(service_settings, dataset_id)}/study").status_code == 404
