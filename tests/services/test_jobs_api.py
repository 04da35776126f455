"""Training jobs over HTTP: validation, the row, the task really on the broker, cancel, metrics and logs.

Tables may be shared with other tests (Postgres in CI): every assertion looks at this test's own ids only.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from sqlalchemy import select

from services.common.db import session_scope
from services.common.models import Case, Dataset, JobLog, JobMetric, TrainingJob, new_id, utcnow
from services.common.settings import Settings
from services.common.tasks import QUEUE_GPU

CLASSES = ["background", "RV", "Myo", "LV"]
FAKE_KEY = "objects/00/" + "0" * 64 + ".nii.gz"


def insert_dataset(settings: Settings, labelled: int = 2, unlabelled: int = 1, split: str = "train") -> str:
    """A dataset row with fake cases (the job routes never open case files); returns its id."""
    dataset_id = new_id()
    with session_scope(settings.sqlalchemy_url) as session:
        session.add(Dataset(id=dataset_id, name="phantoms", preset="mri", classes=CLASSES))
        session.flush()
        for number in range(labelled + unlabelled):
            has_label = number < labelled
            session.add(
                Case(
                    dataset_id=dataset_id,
                    case_id=f"patient{number:03d}_frame01",
                    patient_id=f"patient{number:03d}",
                    split=split,
                    role="labelled" if has_label else "unlabelled",
                    image_key=FAKE_KEY,
                    image_sha256="0" * 64,
                    label_key=FAKE_KEY if has_label else None,
                    label_sha256="0" * 64 if has_label else None,
                    geometry={"size": [8, 8, 2], "spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": [1] * 9},
                )
            )
    return dataset_id


def broker_messages(settings: Settings, queue: str = QUEUE_GPU) -> list[str]:
    """The raw messages waiting on ``queue`` (Redis list, or files of the filesystem transport), bodies decoded."""
    if settings.broker_url.startswith("redis"):
        import redis

        items = redis.Redis.from_url(settings.broker_url).lrange(queue, 0, -1)
        raw = [item.decode() if isinstance(item, bytes) else str(item) for item in items]
    else:
        raw = [path.read_text() for path in sorted((settings.broker_folder / "queue").glob("*")) if path.is_file()]
    return [_with_decoded_body(message) for message in raw]


def _with_decoded_body(message: str) -> str:
    try:
        body = json.loads(message).get("body", "")
        return message + base64.b64decode(body).decode(errors="replace")
    except (ValueError, AttributeError):
        return message


def task_sent(settings: Settings, task: str, row_id: str) -> bool:
    return any(task in message and row_id in message for message in broker_messages(settings))


def job_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "supervised",
        "dataset_id": dataset_id,
        "labelled_patients": 1,
        "config": {"iterations": 20, "size": 32},
        "device": "cpu",
    }
    return {**body, **overrides}


def test_create_job_commits_the_row_and_sends_the_task(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings)
    response = api.post("/v1/jobs", json=job_body(dataset_id, config={"iterations": 20, "size": 32, "lr": 0.02}))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["kind"] == "supervised" and job["dataset_id"] == dataset_id
    assert job["progress"] == 0.0 and job["model_id"] is None and job["error"] is None
    assert job["labelled_patients"] == 1 and job["labelled_ratio"] is None and not job["cancel_requested"]
    config = job["config"]
    assert (config["iterations"], config["size"], config["lr"]) == (20, 32, 0.02)
    assert (config["device"], config["method"], config["batch_size"]) == ("cpu", "supervised", 6)
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get(TrainingJob, job["id"])
        assert row is not None and row.status == "queued" and row.config == config
    assert task_sent(service_settings, "mona.train", job["id"])
    assert api.get(f"/v1/jobs/{job['id']}").json() == job


def test_ratio_instead_of_patients_is_accepted(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings, labelled=1)
    body = job_body(dataset_id, labelled_patients=None, labelled_ratio=0.5, device="auto")
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["labelled_ratio"] == 0.5 and response.json()["config"]["device"] == "auto"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "magic"}, "Input should be 'supervised', 'mean_teacher', 'cps', 'bcp', 'pretrain', 'finetune'"),
        ({"config": {"init_from": "/etc/passwd"}}, "expected no init_from in config"),
        ({"kind": "study"}, "expected the study's labelled ratios in config.ratios"),
        ({"kind": "study", "labelled_patients": None, "config": {"methods": ["pretrain"]}}, "expected methods among"),
        ({"from_job_id": "a" * 32}, "expected from_job_id only for kind finetune"),
        ({"config": {"iterations": 20, "epochs": 3}}, "got unknown ['epochs']"),
        ({"config": {"size": 100}}, "expected size a multiple of 16, at least 16, got 100"),
        ({"config": {"iterations": "20"}}, "expected iterations to be int, got str"),
        ({"config": {"iterations": 0}}, "expected iterations > 0, got 0"),
        ({"labelled_ratio": 0.5}, "expected labelled_patients or labelled_ratio, got both"),
    ],
)
def test_invalid_requests_are_422_with_what_was_expected(
    api: TestClient, service_settings: Settings, overrides: dict[str, Any], message: str
) -> None:
    dataset_id = insert_dataset(service_settings)
    response = api.post("/v1/jobs", json=job_body(dataset_id, **overrides))
    assert response.status_code == 422
    assert message in json.dumps(response.json()["detail"])
    with session_scope(service_settings.sqlalchemy_url) as session:
        assert session.scalars(select(TrainingJob).where(TrainingJob.dataset_id == dataset_id)).all() == []


def test_schema_errors_are_422(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings)
    for body in (job_body(dataset_id, device="tpu"), job_body(dataset_id, labelled_patients=0), {"kind": "x"}):
        assert api.post("/v1/jobs", json=body).status_code == 422


def test_dataset_must_exist_and_hold_a_labelled_case(api: TestClient, service_settings: Settings) -> None:
    for unknown in (new_id(), "not-an-id"):
        response = api.post("/v1/jobs", json=job_body(unknown))
        assert response.status_code == 404 and "expected the id of an existing dataset" in response.json()["detail"]
    unlabelled = insert_dataset(service_settings, labelled=0, unlabelled=2)
    response = api.post("/v1/jobs", json=job_body(unlabelled))
    assert response.status_code == 422 and "at least one labelled case" in response.json()["detail"]
    many = insert_dataset(service_settings, labelled=1)
    assert api.post("/v1/jobs", json=job_body(many, labelled_patients=1)).status_code == 202
    too_many = api.post("/v1/jobs", json=job_body(many, labelled_patients=50))
    assert too_many.status_code == 422 and "labelled_patients" in too_many.json()["detail"]


def test_broker_down_marks_the_job_failed_and_answers_503(
    api: TestClient, service_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(api.app.state.celery, "send_task", refuse)  # type: ignore[attr-defined]
    dataset_id = insert_dataset(service_settings)
    response = api.post("/v1/jobs", json=job_body(dataset_id))
    assert response.status_code == 503 and "expected a reachable task broker" in response.json()["detail"]
    with session_scope(service_settings.sqlalchemy_url) as session:
        (job,) = session.scalars(select(TrainingJob).where(TrainingJob.dataset_id == dataset_id)).all()
        assert job.status == "failed" and job.error is not None and "connection refused" in job.error
        assert job.finished_at is not None


def test_list_is_newest_first_and_filters_by_status(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings)
    first, second = (api.post("/v1/jobs", json=job_body(dataset_id)).json()["id"] for _ in range(2))
    ids = [job["id"] for job in api.get("/v1/jobs").json()["items"]]
    assert ids.index(second) < ids.index(first)
    api.post(f"/v1/jobs/{first}/cancel")
    cancelled = [job["id"] for job in api.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]]
    queued = [job["id"] for job in api.get("/v1/jobs", params={"status": "queued"}).json()["items"]]
    assert first in cancelled and first not in queued and second in queued and second not in cancelled
    assert api.get("/v1/jobs", params={"status": "lost"}).status_code == 422


def _set_status(settings: Settings, job_id: str, status: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(TrainingJob, job_id)
        assert row is not None
        row.status = status


def test_cancel_queued_running_and_finished_jobs(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings)
    queued, running, done = (api.post("/v1/jobs", json=job_body(dataset_id)).json()["id"] for _ in range(3))
    cancelled = api.post(f"/v1/jobs/{queued}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["cancel_requested"] and body["finished_at"] is not None
    again = api.post(f"/v1/jobs/{queued}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == "expected a queued or running job, got status cancelled"
    _set_status(service_settings, running, "running")
    flagged = api.post(f"/v1/jobs/{running}/cancel").json()
    assert flagged["status"] == "running" and flagged["cancel_requested"] and flagged["finished_at"] is None
    _set_status(service_settings, done, "succeeded")
    assert api.post(f"/v1/jobs/{done}/cancel").status_code == 409
    assert api.get(f"/v1/jobs/{done}").json()["cancel_requested"] is False


def test_metrics_and_logs_come_back_in_order(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings)
    job_id = api.post("/v1/jobs", json=job_body(dataset_id)).json()["id"]
    start = utcnow()
    with session_scope(service_settings.sqlalchemy_url) as session:
        session.add_all(
            [
                JobMetric(job_id=job_id, step=20, values={"loss": 0.5, "lr": 0.01, "val_dice": 0.4}),
                JobMetric(job_id=job_id, step=10, values={"loss": 0.9, "lr": 0.01}),
            ]
        )
        for number, message in enumerate(["started", "step 10", "step 20"]):
            level = "WARNING" if number == 1 else "INFO"
            session.add(
                JobLog(job_id=job_id, level=level, message=message, created_at=start + timedelta(seconds=number))
            )
    metrics = api.get(f"/v1/jobs/{job_id}/metrics").json()
    assert metrics == {
        "job_id": job_id,
        "history": [{"step": 10, "loss": 0.9, "lr": 0.01}, {"step": 20, "loss": 0.5, "lr": 0.01, "val_dice": 0.4}],
    }
    logs = api.get(f"/v1/jobs/{job_id}/logs").json()
    assert logs["job_id"] == job_id
    assert [(line["level"], line["message"]) for line in logs["lines"]] == [
        ("INFO", "started"),
        ("WARNING", "step 10"),
        ("INFO", "step 20"),
    ]
    assert all(set(line) == {"at", "level", "message"} for line in logs["lines"])


@pytest.mark.parametrize("job_id", [new_id(), "nope", "A" * 32])
def test_unknown_or_malformed_job_ids_are_404(api: TestClient, job_id: str) -> None:
    for path in ("", "/metrics", "/logs"):
        response = api.get(f"/v1/jobs/{job_id}{path}")
        assert response.status_code == 404 and "expected the id of an existing job" in response.json()["detail"]
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 404


def test_finetune_starts_from_a_succeeded_pretrain_job(api: TestClient, service_settings: Settings) -> None:
    dataset_id = insert_dataset(service_settings)
    pretrain = api.post("/v1/jobs", json=job_body(dataset_id, kind="pretrain")).json()
    early = api.post("/v1/jobs", json=job_body(dataset_id, kind="finetune", from_job_id=pretrain["id"]))
    assert early.status_code == 422 and "expected a succeeded pretrain job, got a queued pretrain job" in early.text
    with session_scope(service_settings.sqlalchemy_url) as session:
        session.get_one(TrainingJob, pretrain["id"]).status = "succeeded"
    response = api.post("/v1/jobs", json=job_body(dataset_id, kind="finetune", from_job_id=pretrain["id"]))
    assert response.status_code == 202, response.text
    init_from = response.json()["config"]["init_from"]
    assert init_from.endswith(f"runs/{pretrain['id']}/checkpoints/last.pt")
    missing = api.post("/v1/jobs", json=job_body(dataset_id, kind="finetune", from_job_id="b" * 32))
    assert missing.status_code == 404
    scratch = api.post("/v1/jobs", json=job_body(dataset_id, kind="finetune"))  # MONA fine-tuning alone
    assert scratch.status_code == 202 and scratch.json()["config"]["init_from"] is None


def test_a_job_shows_its_full_config_even_one_stored_by_an_older_version(
    api: TestClient, service_settings: Settings
) -> None:
    """``config`` is the whole ``TrainConfig`` (defaults filled in); an option this version no longer knows, as a job
    stored by an older version may hold, is left out instead of failing the read."""
    dataset_id = insert_dataset(service_settings, labelled=1)
    job = api.post("/v1/jobs", json=job_body(dataset_id)).json()
    assert (
        job["config"]["iterations"] == 20
        and job["config"]["momentum"] == 0.9
        and job["config"]["method"] == "supervised"
    )
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get_one(TrainingJob, job["id"])
        row.config = {**row.config, "an_option_since_removed": 3}
    shown = api.get(f"/v1/jobs/{job['id']}")
    assert shown.status_code == 200 and "an_option_since_removed" not in shown.json()["config"]
    assert shown.json()["config"] == job["config"]
