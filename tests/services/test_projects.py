"""Projects: a key sees and acts on its own project's datasets, jobs, models, reports and segmentations only; the
admin key (``MONA_API_KEY``) sees all. Another project's row answers exactly as an unknown id (404, same body).

Tables may be shared with other tests (Postgres in CI), so every test works in projects with fresh names.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from services.common.auth import create_key
from services.common.db import session_scope
from services.common.models import Dataset, Model, TrainingJob
from services.common.settings import Settings
from tests.services.test_jobs_api import CLASSES, insert_dataset, job_body
from tests.services.test_models_api import Registered, _files, exported, register_model, scans

__all__ = ["exported", "scans"]  # module fixtures used here


def _project() -> str:
    return f"lab-{uuid.uuid4().hex[:8]}"


def _key(settings: Settings, project: str, admin: bool = False) -> dict[str, str]:
    with session_scope(settings.sqlalchemy_url) as session:
        made = create_key(session, f"member of {project}", project, admin)
    return {"X-API-Key": made.key}


def _move(settings: Settings, project: str, registered: Registered) -> None:
    """Put a registered model, its job and its dataset into ``project``."""
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(Dataset).where(Dataset.id == registered.dataset_id).values(project=project))
        session.execute(update(TrainingJob).where(TrainingJob.id == registered.job_id).values(project=project))
        session.execute(update(Model).where(Model.id == registered.model_id).values(project=project))


def _new_dataset(api: TestClient, headers: dict[str, str], **body: object) -> dict[str, object]:
    response = api.post("/v1/datasets", json={"name": "scans", "classes": CLASSES, **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def test_a_key_sees_only_its_projects_datasets(api: TestClient, service_settings: Settings) -> None:
    lab_a, lab_b = _project(), _project()
    key_a, key_b = _key(service_settings, lab_a), _key(service_settings, lab_b)
    dataset = _new_dataset(api, key_a)
    assert dataset["project"] == lab_a
    path = f"/v1/datasets/{dataset['id']}"

    assert api.get(path, headers=key_a).status_code == 200
    stranger = uuid.uuid4().hex
    unknown = api.get(f"/v1/datasets/{stranger}", headers=key_b)
    hidden = api.get(path, headers=key_b)
    assert hidden.status_code == unknown.status_code == 404
    same_words = unknown.json()["detail"].replace(stranger, str(dataset["id"]))
    assert hidden.json()["detail"] == same_words, "another project's dataset must answer as an unknown id does"
    assert api.get(f"{path}/cases", headers=key_b).status_code == 404
    case = api.post(f"{path}/cases", files={"image": ("x.nii.gz", b"\x1f\x8b", "application/gzip")}, headers=key_b)
    assert case.status_code == 404, case.text

    assert dataset["id"] in [row["id"] for row in api.get("/v1/datasets", headers=key_a).json()["items"]]
    assert dataset["id"] not in [row["id"] for row in api.get("/v1/datasets", headers=key_b).json()["items"]]
    assert {row["project"] for row in api.get("/v1/datasets", headers=key_b).json()["items"]} <= {lab_b}
    assert dataset["id"] in [row["id"] for row in api.get("/v1/datasets").json()["items"]], "the admin key sees all"
    narrowed = api.get("/v1/datasets", params={"project": lab_a}).json()["items"]
    assert [row["id"] for row in narrowed] == [dataset["id"]]
    assert api.get("/v1/datasets", params={"project": lab_a}, headers=key_b).status_code == 403
    assert api.get("/v1/datasets", params={"project": "Bad Name"}).status_code == 422


def test_only_an_admin_key_creates_in_another_project(api: TestClient, service_settings: Settings) -> None:
    lab_a, lab_b = _project(), _project()
    key_a, key_b = _key(service_settings, lab_a), _key(service_settings, lab_b)
    refused = api.post("/v1/datasets", json={"name": "x", "classes": CLASSES, "project": lab_b}, headers=key_a)
    assert refused.status_code == 403 and lab_a in refused.json()["detail"]
    assert _new_dataset(api, key_a, project=lab_a)["project"] == lab_a
    given = _new_dataset(api, {}, project=lab_b)
    assert given["project"] == lab_b
    assert api.get(f"/v1/datasets/{given['id']}", headers=key_b).status_code == 200
    assert api.get(f"/v1/datasets/{given['id']}", headers=key_a).status_code == 404
    assert api.get("/v1/me", headers=key_a).json()["project"] == lab_a
    me = api.get("/v1/me").json()
    assert me["admin"] is True and me["project"] == "default"


def test_jobs_follow_their_dataset_and_stay_in_it(api: TestClient, service_settings: Settings) -> None:
    lab_a, lab_b = _project(), _project()
    key_a, key_b = _key(service_settings, lab_a), _key(service_settings, lab_b)
    dataset_id = insert_dataset(service_settings)
    with session_scope(service_settings.sqlalchemy_url) as session:
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(project=lab_a))
    assert api.post("/v1/jobs", json=job_body(dataset_id), headers=key_b).status_code == 404
    response = api.post("/v1/jobs", json=job_body(dataset_id), headers=key_a)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["project"] == lab_a
    for suffix in ("", "/metrics", "/logs", "/study"):
        assert api.get(f"/v1/jobs/{job['id']}{suffix}", headers=key_b).status_code == 404, suffix
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=key_b).status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}", headers=key_b).status_code == 404
    assert job["id"] in [row["id"] for row in api.get("/v1/jobs", headers=key_a).json()["items"]]
    assert job["id"] not in [row["id"] for row in api.get("/v1/jobs", headers=key_b).json()["items"]]
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=key_a).json()["status"] == "cancelled"


def test_models_segmentations_and_reports_stay_in_their_project(
    api: TestClient, service_settings: Settings, exported: Path, scans: tuple[Path, Path]
) -> None:
    lab_a, lab_b = _project(), _project()
    key_a, key_b = _key(service_settings, lab_a), _key(service_settings, lab_b)
    registered = register_model(service_settings, exported)
    _move(service_settings, lab_a, registered)
    model = f"/v1/models/{registered.model_id}"
    for suffix in ("", "/onnx", "/manifest"):
        assert api.get(f"{model}{suffix}", headers=key_b).status_code == 404, suffix
        assert api.get(f"{model}{suffix}", headers=key_a).status_code == 200, suffix
    assert registered.model_id not in [row["id"] for row in api.get("/v1/models", headers=key_b).json()["items"]]
    assert registered.model_id in [row["id"] for row in api.get("/v1/models", headers=key_a).json()["items"]]
    assert api.post(f"{model}/segment", files=_files(*scans), headers=key_b).status_code == 404

    json_answer = {"Accept": "application/json", **key_a}
    segmented = api.post(f"{model}/segment", files=_files(*scans), headers=json_answer)
    assert segmented.status_code == 200, segmented.text
    body = segmented.json()
    assert body["project"] == lab_a and body["report"]["project"] == lab_a
    for path in (f"/v1/segmentations/{body['id']}", body["mask_url"], body["overlay_url"]):
        assert api.get(path, headers=key_b).status_code == 404, path
        assert api.get(path, headers=key_a).status_code == 200, path
    report = f"/v1/reports/{body['report_id']}"
    assert api.get(report, headers=key_b).status_code == 404
    assert api.get(report, headers=key_a).json()["project"] == lab_a
    evaluation = {"dataset_id": registered.dataset_id, "split": "val"}
    assert api.post(f"{model}/evaluations", json=evaluation, headers=key_b).status_code == 404


def test_projects_are_named_safely(service_settings: Settings) -> None:
    with session_scope(service_settings.sqlalchemy_url) as session, pytest.raises(ValueError, match="project name"):
        create_key(session, "bad", "../other")
