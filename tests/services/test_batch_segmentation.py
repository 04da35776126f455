"""Batch segmentation: queued over REST on the CPU queue, run by the worker's runner, one mask per case on the case's
own grid, DSC/ASD for labelled cases, every mask in one zip; resumable, a bad case skipped, deletable."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from mona_core.io import read_image, read_label
from services.api.main import create_app
from services.common.db import session_scope
from services.common.models import Case, Report, Segmentation
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.common.tasks import QUEUE_CPU
from services.worker import batch as batch_module
from services.worker.evaluation import run_evaluation
from tests.services.conftest import API_KEY
from tests.services.test_datasets_api import phantom_bytes, upload
from tests.services.test_jobs_api import CLASSES, broker_messages
from tests.services.test_models_api import Registered, exported, register_model

__all__ = ["exported"]  # module fixture used here


@pytest.fixture()
def api(service_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings), headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture()
def scene(api: TestClient, service_settings: Settings, exported: Path, tmp_path: Path) -> dict[str, Any]:
    """A registered model and a dataset of its classes: two labelled val cases and one unlabelled test scan."""
    registered: Registered = register_model(service_settings, exported)
    dataset = api.post("/v1/datasets", json={"name": "batch", "classes": CLASSES}).json()["id"]
    images = {}
    for seed, split, labelled in ((11, "val", True), (12, "val", True), (13, "test", False)):
        image, label = phantom_bytes(tmp_path, seed=seed)
        name = f"case{seed}_0000.nii.gz"
        response = upload(api, dataset, image, label if labelled else None, name=name, split=split)
        assert response.status_code == 201, response.text
        images[f"case{seed}"] = image
    return {"model": registered.model_id, "dataset": dataset, "images": images}


def _create(api: TestClient, model_id: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/v1/models/{model_id}/segmentations", json=body)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def test_a_split_is_segmented_with_scores_and_zipped(
    api: TestClient, service_settings: Settings, scene: dict[str, Any], tmp_path: Path
) -> None:
    created = _create(api, scene["model"], dataset_id=scene["dataset"], split="val")
    assert (created["kind"], created["status"], created["split"]) == ("batch", "queued", "val")
    assert [case["case_id"] for case in created["cases"]] == ["case11", "case12"]
    assert all(case["mask_url"] is None for case in created["cases"])
    assert any(created["id"] in message for message in broker_messages(service_settings, QUEUE_CPU))

    assert run_evaluation(service_settings, created["id"]) == "succeeded"
    batch = api.get(f"/v1/segmentations/{created['id']}").json()
    assert (batch["status"], batch["progress"], batch["summary"]["failed_cases"]) == ("succeeded", 1.0, {})
    assert batch["summary"]["mean"]["dice"] is not None, "labelled cases are scored"
    for case in batch["cases"]:
        assert set(case["scores"]) == {"RV", "Myo", "LV"} and case["error"] is None
        mask_file = tmp_path / f"{case['case_id']}-mask.nii.gz"
        mask_file.write_bytes(api.get(case["mask_url"]).content)
        scan_file = tmp_path / f"{case['case_id']}.nii.gz"
        scan_file.write_bytes(scene["images"][case["case_id"]])
        assert read_label(mask_file).geometry.matches(read_image(scan_file).geometry, tolerance=1e-6)
        assert api.get(case["overlay_url"]).content.startswith(b"\x89PNG")
    report = api.get(batch["report_url"]).json()
    assert {case["case_id"] for case in report["cases"]} == {"case11", "case12"}

    archive = zipfile.ZipFile(io.BytesIO(api.get(batch["masks_zip_url"]).content))
    assert sorted(archive.namelist()) == ["case11.nii.gz", "case12.nii.gz"]
    first = api.get(batch["cases"][0]["mask_url"]).content
    assert archive.read("case11.nii.gz") == first
    assert not list((service_settings.artifact_root / "tmp").iterdir()), "the zip is a staging file, removed"


def test_listed_cases_include_unlabelled_scans(
    api: TestClient, service_settings: Settings, scene: dict[str, Any]
) -> None:
    created = _create(api, scene["model"], dataset_id=scene["dataset"], case_ids=["case13", "case11"], queue="gpu")
    assert run_evaluation(service_settings, created["id"]) == "succeeded"
    cases = {case["case_id"]: case for case in api.get(f"/v1/segmentations/{created['id']}").json()["cases"]}
    assert set(cases) == {"case11", "case13"}
    assert cases["case13"]["scores"] is None and cases["case13"]["mask_url"] is not None
    assert cases["case11"]["scores"] is not None


class _Interrupted(BaseException):
    """Stands for a worker killed in the middle of a batch."""


def test_a_batch_resumes_where_it_stopped(
    api: TestClient, service_settings: Settings, scene: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _create(api, scene["model"], dataset_id=scene["dataset"], split="val")
    real = batch_module._segment_case
    calls: list[str] = []

    def dies_on_the_second(*args: Any, **kwargs: Any) -> None:
        calls.append(args[4][0])
        if len(calls) == 2:
            raise _Interrupted
        real(*args, **kwargs)

    monkeypatch.setattr(batch_module, "_segment_case", dies_on_the_second)
    with pytest.raises(_Interrupted):
        run_evaluation(service_settings, created["id"])
    with session_scope(service_settings.sqlalchemy_url) as session:
        (first,) = session.scalars(select(Segmentation).where(Segmentation.batch_id == created["id"]))
        session.execute(update(Report).where(Report.id == created["id"]).values(status="queued"))  # as recovery does
    monkeypatch.setattr(batch_module, "_segment_case", real)
    assert run_evaluation(service_settings, created["id"]) == "succeeded"
    with session_scope(service_settings.sqlalchemy_url) as session:
        rows = list(session.scalars(select(Segmentation).where(Segmentation.batch_id == created["id"])))
    assert sorted(str(row.case_id) for row in rows) == ["case11", "case12"], "each case segmented once"
    assert first.id in {row.id for row in rows}, "the case done before the interruption was not redone"


def test_a_bad_case_is_reported_and_the_others_are_segmented(
    api: TestClient, service_settings: Settings, scene: dict[str, Any]
) -> None:
    with session_scope(service_settings.sqlalchemy_url) as session:
        key = session.scalar(
            select(Case.image_key).where(Case.dataset_id == scene["dataset"], Case.case_id == "case12")
        )
    assert key is not None
    ArtifactStore(service_settings.artifact_root).path(key).write_bytes(b"not a scan any more")
    created = _create(api, scene["model"], dataset_id=scene["dataset"], split="val")
    assert run_evaluation(service_settings, created["id"]) == "succeeded"
    batch = api.get(f"/v1/segmentations/{created['id']}").json()
    cases = {case["case_id"]: case for case in batch["cases"]}
    assert cases["case11"]["mask_url"] is not None and cases["case11"]["error"] is None
    assert cases["case12"]["mask_url"] is None and "NiftiError" in cases["case12"]["error"]
    assert batch["summary"]["n_segmented"] == 1 and list(batch["summary"]["failed_cases"]) == ["case12"]


def test_bad_requests_are_refused(api: TestClient, scene: dict[str, Any]) -> None:
    path = f"/v1/models/{scene['model']}/segmentations"
    both = {"dataset_id": scene["dataset"], "split": "val", "case_ids": ["case11"]}
    assert api.post(path, json=both).status_code == 422
    assert api.post(path, json={"dataset_id": scene["dataset"]}).status_code == 422
    unknown = api.post(path, json={"dataset_id": scene["dataset"], "case_ids": ["case11", "nope"]})
    assert unknown.status_code == 422 and "nope" in unknown.text
    assert api.post(path, json={"dataset_id": scene["dataset"], "split": "train"}).status_code == 422
    assert api.post(f"/v1/models/{'0' * 32}/segmentations", json=both | {"case_ids": None}).status_code == 404


def test_deleting_a_batch_removes_its_masks(api: TestClient, service_settings: Settings, scene: dict[str, Any]) -> None:
    created = _create(api, scene["model"], dataset_id=scene["dataset"], split="val")
    assert api.delete(f"/v1/segmentations/{created['id']}").status_code == 409, "queued: still to run"
    assert run_evaluation(service_settings, created["id"]) == "succeeded"
    masks = [case["mask_url"] for case in api.get(f"/v1/segmentations/{created['id']}").json()["cases"]]
    assert api.delete(f"/v1/segmentations/{created['id']}").status_code == 204
    assert api.get(f"/v1/segmentations/{created['id']}").status_code == 404
    assert all(api.get(mask).status_code == 404 for mask in masks)
    with session_scope(service_settings.sqlalchemy_url) as session:
        left = session.scalar(
            select(func.count()).select_from(Segmentation).where(Segmentation.batch_id == created["id"])
        )
    assert left == 0
