"""Deletion: DELETE answers 204 and then 404; unfinished work that uses the target answers 409 and deletes nothing;
the stored objects no row references any more are removed, those another row still uses stay.

The objects in this test's store are compared with every object key the database references (tables may be shared
with other tests in CI, whose keys only make the reference set larger, never smaller).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from services.api.main import create_app
from services.common.auth import create_key
from services.common.db import session_scope
from services.common.deletion import all_referenced
from services.common.models import Case, Dataset, JobStatus, Report, TrainingJob, new_id
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.worker.recovery import RecoveryLoop
from tests.services.conftest import API_KEY
from tests.services.test_datasets_api import create_dataset, phantom_bytes, upload
from tests.services.test_jobs_api import job_body
from tests.services.test_models_api import Registered, _files, exported, register_model, scans

__all__ = ["exported", "scans"]  # module fixtures used here


@pytest.fixture()
def settings(service_settings: Settings) -> Settings:
    """No grace period: an object is removed as soon as no row references it."""
    return service_settings.model_copy(update={"object_grace_s": 0.0})


@pytest.fixture()
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as client:
        yield client


def stored(settings: Settings) -> set[str]:
    root = settings.artifact_root.resolve()
    return {path.relative_to(root).as_posix() for path in (root / "objects").rglob("*") if path.is_file()}


def referenced(settings: Settings) -> set[str]:
    with session_scope(settings.sqlalchemy_url) as session:
        return all_referenced(session)


def assert_no_orphans(settings: Settings) -> None:
    orphans = stored(settings) - referenced(settings)
    assert not orphans, f"objects no row references were left in the store: {sorted(orphans)}"


def _dataset_keys(settings: Settings) -> set[str]:
    """Object keys of every case row (images and labels)."""
    with session_scope(settings.sqlalchemy_url) as session:
        rows = session.execute(select(Case.image_key, Case.label_key)).all()
    return {key for row in rows for key in row if key}


def _case_keys(api: TestClient, dataset_id: str) -> set[str]:
    return {case["image_sha256"] for case in api.get(f"/v1/datasets/{dataset_id}/cases").json()["items"]}


def test_deleting_a_dataset_removes_its_files_but_keeps_shared_ones(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    shared_image, shared_label = phantom_bytes(tmp_path, seed=7101)
    own_image, own_label = phantom_bytes(tmp_path, seed=7102)
    first, second = create_dataset(api, "first"), create_dataset(api, "second")
    assert upload(api, first, shared_image, shared_label, name="a_0000.nii.gz").status_code == 201
    assert upload(api, first, own_image, own_label, name="b_0000.nii.gz").status_code == 201
    assert upload(api, second, shared_image, shared_label, name="c_0000.nii.gz").status_code == 201
    before = stored(settings)
    assert len(before) == 4, "two images and two labels, the shared pair stored once"
    kept = _case_keys(api, second)

    assert api.delete(f"/v1/datasets/{first}").status_code == 204
    assert api.get(f"/v1/datasets/{first}").status_code == 404
    assert api.get(f"/v1/datasets/{first}/cases").status_code == 404
    assert first not in [row["id"] for row in api.get("/v1/datasets").json()["items"]]
    assert api.delete(f"/v1/datasets/{first}").status_code == 404
    after = stored(settings)
    assert len(after) == 2 and after < before, "the first dataset's own image and label are gone"
    assert _case_keys(api, second) == kept and api.get(f"/v1/datasets/{second}").json()["n_cases"] == 1
    assert all(Path(settings.artifact_root, key).is_file() for key in after)
    assert_no_orphans(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        tombstone = session.get_one(Dataset, first)
        assert tombstone.deleted_at is not None and tombstone.name == "(deleted)"


def test_deleting_a_case(api: TestClient, settings: Settings, tmp_path: Path) -> None:
    dataset = create_dataset(api)
    for seed in (7103, 7104):
        image, label = phantom_bytes(tmp_path, seed=seed)
        assert upload(api, dataset, image, label, name=f"p{seed}_frame01_0000.nii.gz").status_code == 201
    assert api.delete(f"/v1/datasets/{dataset}/cases/p7103_frame01").status_code == 204
    assert [case["case_id"] for case in api.get(f"/v1/datasets/{dataset}/cases").json()["items"]] == ["p7104_frame01"]
    assert api.delete(f"/v1/datasets/{dataset}/cases/p7103_frame01").status_code == 404
    assert len(stored(settings)) == 2, "the deleted case's image and label are gone"
    assert_no_orphans(settings)


def test_unfinished_work_blocks_deletion_and_nothing_is_deleted(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    dataset = create_dataset(api)
    for seed in (7105, 7106):
        image, label = phantom_bytes(tmp_path, seed=seed)
        assert upload(api, dataset, image, label, name=f"q{seed}_frame01_0000.nii.gz").status_code == 201
    job = api.post("/v1/jobs", json=job_body(dataset)).json()
    before = stored(settings)
    refused = api.delete(f"/v1/datasets/{dataset}")
    assert refused.status_code == 409 and job["id"] in refused.json()["detail"]
    assert api.delete(f"/v1/datasets/{dataset}/cases/q7105_frame01").status_code == 409
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 409
    assert stored(settings) == before and api.get(f"/v1/datasets/{dataset}").json()["n_cases"] == 2

    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    run_dir = ArtifactStore(settings.artifact_root).run_dir(job["id"])
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404 and not run_dir.exists()
    assert api.delete(f"/v1/datasets/{dataset}").status_code == 204
    assert not stored(settings)


def test_deleting_a_model_takes_its_files_masks_and_reports(
    api: TestClient, settings: Settings, exported: Path, scans: tuple[Path, Path]
) -> None:
    registered: Registered = register_model(settings, exported)
    model = f"/v1/models/{registered.model_id}"
    segmented = api.post(f"{model}/segment", files=_files(*scans), headers={"Accept": "application/json"}).json()
    ad_hoc = api.post(f"{model}/segment", files=_files(scans[0]), headers={"Accept": "application/json"}).json()
    assert api.get(segmented["overlay_url"]).status_code == 200, "drawn on first request, then stored"
    model_dir = settings.artifact_root / "models" / registered.model_id
    assert model_dir.is_dir(), "segmenting materialised the model folder"
    model_objects = {key for key in stored(settings) if not key.endswith(".nii.gz")} | {
        key for key in stored(settings) if key.endswith(".nii.gz") and key not in _dataset_keys(settings)
    }
    assert {key.rsplit(".", 1)[-1] for key in model_objects} >= {"onnx", "json", "png", "gz"}
    assert api.delete(f"/v1/jobs/{registered.job_id}").status_code == 409, "the job's model still exists"

    with session_scope(settings.sqlalchemy_url) as session:
        evaluation = Report(id=new_id(), source="evaluation", model_id=registered.model_id, status="queued")
        session.add(evaluation)
    assert api.delete(f"{model}").status_code == 409, "an unfinished evaluation uses the model"
    assert api.delete(f"/v1/reports/{evaluation.id}").status_code == 409
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(Report).where(Report.id == evaluation.id).values(status=JobStatus.FAILED.value))

    assert api.delete(f"{model}").status_code == 204
    for path in (model, f"{model}/onnx", f"/v1/segmentations/{segmented['id']}", f"/v1/segmentations/{ad_hoc['id']}"):
        assert api.get(path).status_code == 404, path
    assert api.get(f"/v1/reports/{segmented['report_id']}").status_code == 404
    assert api.get(f"/v1/reports/{evaluation.id}").status_code == 404
    assert not model_dir.exists()
    still_used = referenced(settings)  # by other tests' rows too when the database is shared (same model bytes)
    left = {key for key in model_objects if Path(settings.artifact_root, key).exists()}
    assert left <= still_used, f"the model's objects that nothing uses any more must go, left: {left - still_used}"
    assert_no_orphans(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.get_one(TrainingJob, registered.job_id).model_id is None
    assert api.delete(f"/v1/jobs/{registered.job_id}").status_code == 204


def test_deleting_reports_and_segmentations(
    api: TestClient, settings: Settings, exported: Path, scans: tuple[Path, Path]
) -> None:
    registered = register_model(settings, exported)
    model = f"/v1/models/{registered.model_id}"
    accept = {"Accept": "application/json"}
    first = api.post(f"{model}/segment", files=_files(*scans), headers=accept).json()
    second = api.post(f"{model}/segment", files=_files(*scans), headers=accept).json()
    assert api.delete(f"/v1/reports/{first['report_id']}").status_code == 204
    assert api.get(f"/v1/reports/{first['report_id']}").status_code == 404
    kept = api.get(f"/v1/segmentations/{first['id']}").json()
    assert kept["report_id"] is None and api.get(kept["mask_url"]).status_code == 200, "the mask stays"
    assert api.delete(f"/v1/segmentations/{second['id']}").status_code == 204
    assert api.get(f"/v1/segmentations/{second['id']}").status_code == 404
    assert api.get(f"/v1/reports/{second['report_id']}").status_code == 404, "its report went with it"
    assert api.get(first["mask_url"]).status_code == 200, "the same mask content is still used by the first one"
    assert_no_orphans(settings)


def test_another_projects_key_cannot_delete(api: TestClient, settings: Settings) -> None:
    dataset = create_dataset(api)
    with session_scope(settings.sqlalchemy_url) as session:
        stranger = create_key(session, "stranger", f"other-{new_id()[:8]}").key
    assert api.delete(f"/v1/datasets/{dataset}", headers={"X-API-Key": stranger}).status_code == 404
    assert api.get(f"/v1/datasets/{dataset}").status_code == 200


def test_the_retention_pass_sweeps_old_orphaned_objects_only(settings: Settings) -> None:
    store = ArtifactStore(settings.artifact_root)
    old, fresh = (store.put_bytes(text, ".json") for text in (b"left behind by a crash", b"being uploaded"))
    os.utime(store.path(old.key), (1.0, 1.0))
    RecoveryLoop(settings).run_once()
    assert not store.path(old.key).exists()
    assert store.path(fresh.key).exists(), "an unreferenced object younger than the sweep's grace may be in use"
