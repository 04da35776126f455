"""Models, segmentations and reports over HTTP, with a real tiny exported UNet served by ONNX Runtime.

The model is exported once per module (torch is fine in tests; the API never imports it) and registered in each
test's own store and database rows. Tables may be shared (Postgres in CI): assertions filter by this test's ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mona_core.data.phantoms import make_phantom
from mona_core.export.manifest import MANIFEST_FILE, MODEL_FILE
from mona_core.export.onnx_export import export_checkpoint
from mona_core.io import read_image, read_label, write_volume
from mona_core.models import UNetConfig, build_model
from services.api.segmentation import SegmenterCache, case_id_from, materialise_model_dir
from services.common.db import session_scope
from services.common.models import Model, Report, Segmentation, TrainingJob, new_id
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from tests.services.test_jobs_api import CLASSES, insert_dataset, task_sent

SIZE = 32
METRICS = {
    "best": {"step": 20, "val_dice": 0.5},
    "parity": {
        "tolerance": 1e-3,
        "max_abs_diff_random": 2e-6,
        "max_abs_diff_real": 1e-6,
        "argmax_agreement_real": 1.0,
        "batch_checked": 4,
        "export_batch": 2,
    },
}
FOREGROUND_STATUSES = {"ok", "both_empty", "prediction_empty", "label_empty"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 4-class UNet (slices 32 x 32, preset mri) exported to model.onnx + manifest.json."""
    torch.manual_seed(0)
    config = UNetConfig(num_classes=len(CLASSES))
    checkpoint = {
        "format": "mona-checkpoint/1",
        "step": 1,
        "model_config": config.to_dict(),
        "model": build_model(config).state_dict(),
        "train_config": {"iterations": 1, "size": SIZE},
        "data": {"classes": CLASSES, "preset": "mri", "size": SIZE},
        "best": None,
    }
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "model").model_dir


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small oblique phantom: (image, label) NIfTI files."""
    folder = tmp_path_factory.mktemp("scans")
    image, label = make_phantom(3, shape=(3, 40, 48), spacing=(1.25, 1.5, 7.0), oblique=True)
    return write_volume(image, folder / "patient042_frame01.nii.gz"), write_volume(label, folder / "label.nii.gz")


@dataclass(frozen=True)
class Registered:
    model_id: str
    job_id: str
    dataset_id: str
    onnx_sha256: str


def register_model(settings: Settings, model_dir: Path) -> Registered:
    """Copy the export into the store and insert the rows a finished training job leaves behind."""
    store = ArtifactStore(settings.artifact_root)
    onnx = store.copy_in(model_dir / MODEL_FILE, ".onnx")
    manifest = store.copy_in(model_dir / MANIFEST_FILE, ".json")
    dataset_id = insert_dataset(settings, labelled=1, split="val")
    job_id, model_id = new_id(), new_id()
    with session_scope(settings.sqlalchemy_url) as session:
        session.add(TrainingJob(id=job_id, kind="supervised", dataset_id=dataset_id, config={}, status="succeeded"))
        session.flush()
        session.add(
            Model(
                id=model_id,
                job_id=job_id,
                onnx_key=onnx.key,
                manifest_key=manifest.key,
                onnx_sha256=onnx.sha256,
                classes=CLASSES,
                preset="mri",
                size=SIZE,
                metrics=METRICS,
            )
        )
        job = session.get(TrainingJob, job_id)
        assert job is not None
        job.model_id = model_id
    return Registered(model_id, job_id, dataset_id, onnx.sha256)


@pytest.fixture()
def model(service_settings: Settings, exported: Path) -> Registered:
    return register_model(service_settings, exported)


def _files(image: Path, label: Path | None = None) -> dict[str, tuple[str, bytes, str]]:
    files = {"image": (image.name, image.read_bytes(), "application/gzip")}
    if label is not None:
        files["label"] = (label.name, label.read_bytes(), "application/gzip")
    return files


def _segmentations_of(settings: Settings, model_id: str) -> int:
    with session_scope(settings.sqlalchemy_url) as session:
        query = select(func.count()).select_from(Segmentation).where(Segmentation.model_id == model_id)
        return int(session.scalar(query) or 0)


def test_models_list_get_and_downloads(api: TestClient, model: Registered, exported: Path) -> None:
    listed = {item["id"]: item for item in api.get("/v1/models").json()["items"]}
    assert model.model_id in listed
    item = api.get(f"/v1/models/{model.model_id}").json()
    assert item == listed[model.model_id]
    assert item["classes"] == CLASSES and item["preset"] == "mri" and item["size"] == SIZE
    assert item["postprocess"] == "none"
    assert item["job_id"] == model.job_id and item["onnx_sha256"] == model.onnx_sha256
    assert item["metrics"] == METRICS and item["created_at"].endswith("Z")
    onnx = api.get(f"/v1/models/{model.model_id}/onnx")
    assert onnx.status_code == 200 and onnx.headers["content-type"] == "application/octet-stream"
    assert 'filename="model.onnx"' in onnx.headers["content-disposition"]
    assert hashlib.sha256(onnx.content).hexdigest() == model.onnx_sha256
    manifest = api.get(f"/v1/models/{model.model_id}/manifest")
    assert manifest.headers["content-type"].startswith("application/json")
    assert manifest.json() == json.loads((exported / MANIFEST_FILE).read_text())
    assert manifest.json()["onnx_sha256"] == model.onnx_sha256


def test_segment_returns_the_mask_on_the_input_grid(
    api: TestClient, service_settings: Settings, model: Registered, scans: tuple[Path, Path], tmp_path: Path
) -> None:
    image_path, _ = scans
    response = api.post(f"/v1/models/{model.model_id}/segment", files=_files(image_path))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="mask.nii.gz"'
    assert "x-report-id" not in response.headers
    mask_path = tmp_path / "mask.nii.gz"
    mask_path.write_bytes(response.content)
    image, mask = read_image(image_path), read_label(mask_path, num_classes=len(CLASSES))
    assert mask.geometry.size == image.geometry.size
    assert mask.geometry.spacing == image.geometry.spacing and mask.geometry.origin == image.geometry.origin
    np.testing.assert_allclose(mask.geometry.direction, image.geometry.direction, atol=1e-6, rtol=0)
    assert not np.allclose(image.geometry.direction, np.eye(3).ravel(), atol=1e-3)  # the phantom is oblique
    segmentation_id = response.headers["x-segmentation-id"]
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get(Segmentation, segmentation_id)
        assert row is not None and row.model_id == model.model_id and row.report_id is None
        assert row.input_sha256 == hashlib.sha256(image_path.read_bytes()).hexdigest() and row.seconds > 0
    info = api.get(f"/v1/segmentations/{segmentation_id}").json()
    assert info["overlay_url"] is None and info["report"] is None and info["geometry"]["size"] == [48, 40, 3]
    assert api.get(info["mask_url"]).content == response.content
    assert api.get(f"/v1/segmentations/{segmentation_id}/overlay").status_code == 404
    assert list((ArtifactStore(service_settings.artifact_root).root / "tmp").iterdir()) == []


def test_segment_with_a_label_records_a_report_and_an_overlay(
    api: TestClient, model: Registered, scans: tuple[Path, Path]
) -> None:
    response = api.post(f"/v1/models/{model.model_id}/segment", files=_files(*scans))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    report = api.get(f"/v1/reports/{response.headers['x-report-id']}").json()
    assert (report["source"], report["status"], report["model_id"]) == ("segmentation", "succeeded", model.model_id)
    assert report["progress"] == 1.0 and report["unit"].startswith("mm") and report["finished_at"] is not None
    (case,) = report["cases"]
    assert case["case_id"] == "patient042_frame01" and list(case["classes"]) == CLASSES[1:]
    assert all(scores["status"] in FOREGROUND_STATUSES for scores in case["classes"].values())
    assert set(report["summary"]["per_class"]) == set(CLASSES[1:]) and "mean" in report["summary"]
    overlay = api.get(report["overlay_urls"]["patient042_frame01"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert overlay.content.startswith(b"\x89PNG")
    segmentation_overlay = api.get(f"/v1/segmentations/{response.headers['x-segmentation-id']}/overlay")
    assert segmentation_overlay.content == overlay.content
    assert api.get(f"/v1/reports/{report['id']}/overlay/other_case").status_code == 404
    assert api.get(f"/v1/reports/{report['id']}/overlay/..%2F..%2Fmona.db").status_code == 404


def test_the_overlay_is_drawn_on_first_request_not_during_segment(
    api: TestClient, service_settings: Settings, model: Registered, scans: tuple[Path, Path]
) -> None:
    """The segment call answers before any PNG exists; the first GET draws it once and keeps its key."""
    store = ArtifactStore(service_settings.artifact_root)
    pngs_before = set(store.root.glob("objects/*/*.png"))
    response = api.post(
        f"/v1/models/{model.model_id}/segment", files=_files(*scans), headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["overlay_url"] == f"/v1/segmentations/{body['id']}/overlay"
    assert list(body["report"]["overlay_urls"]) == ["patient042_frame01"]
    assert set(store.root.glob("objects/*/*.png")) == pngs_before
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get_one(Segmentation, body["id"])
        assert row.overlay_key is None and row.viewer_image_key and row.viewer_label_key
        kept_scan = read_image(store.path(row.viewer_image_key))
    assert kept_scan.array.shape == read_image(scans[0]).array.shape
    first = api.get(body["overlay_url"])
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get_one(Segmentation, body["id"])
        report = session.get_one(Report, body["report_id"])
        assert row.overlay_key is not None and report.overlays == {"patient042_frame01": row.overlay_key}
        assert store.path(row.overlay_key).read_bytes() == first.content
    assert api.get(body["report"]["overlay_urls"]["patient042_frame01"]).content == first.content


def _most_inside_at_once(slots: int, threads: int = 8) -> int:
    """How many of ``threads`` threads were inside ``inference_slot(slots)`` at once, at most."""
    import threading
    import time

    from services.api.segmentation import inference_slot

    inside, most, lock = 0, 0, threading.Lock()

    def run() -> None:
        nonlocal inside, most
        with inference_slot(slots):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.2)
            with lock:
                inside -= 1

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return most


def test_inference_slots_let_one_model_run_at_a_time() -> None:
    """``inference_slot(1)``: of eight threads, never two inside at once; ``inference_slot(3)``: up to three."""
    assert _most_inside_at_once(1) == 1
    assert _most_inside_at_once(3) == 3


def test_segment_as_json(api: TestClient, model: Registered, scans: tuple[Path, Path]) -> None:
    response = api.post(
        f"/v1/models/{model.model_id}/segment", files=_files(*scans), headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    keys = {"id", "model_id", "project", "mask_url", "overlay_url", "report_id", "report", "geometry", "seconds"}
    assert set(body) == keys
    assert body["model_id"] == model.model_id and body["report"]["id"] == body["report_id"]
    assert body["mask_url"] == f"/v1/segmentations/{body['id']}/mask"
    assert api.get(body["mask_url"]).headers["content-type"] == "application/gzip"
    assert api.get(body["overlay_url"]).content.startswith(b"\x89PNG")
    assert api.get(f"/v1/segmentations/{body['id']}").json() == body


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("scan.nii.gz", b"garbage bytes, not a NIfTI file", "expected a complete NIfTI file"),
        ("scan.txt", b"whatever", "expected a .nii.gz, .nii, .mha, .nrrd, .zip (a DICOM series) file, got 'scan.txt'"),
    ],
)
def test_bad_uploads_are_422_and_leave_nothing(
    api: TestClient, service_settings: Settings, model: Registered, name: str, payload: bytes, message: str
) -> None:
    response = api.post(f"/v1/models/{model.model_id}/segment", files={"image": (name, payload, "application/gzip")})
    assert response.status_code == 422 and message in response.json()["detail"]
    assert _segmentations_of(service_settings, model.model_id) == 0
    assert list((ArtifactStore(service_settings.artifact_root).root / "tmp").iterdir()) == []


def test_label_off_the_image_grid_is_422(
    api: TestClient, service_settings: Settings, model: Registered, scans: tuple[Path, Path], tmp_path: Path
) -> None:
    _, other = make_phantom(4, shape=(3, 40, 48), oblique=True)
    label = write_volume(other, tmp_path / "other.nii.gz")
    response = api.post(f"/v1/models/{model.model_id}/segment", files=_files(scans[0], label))
    assert response.status_code == 422 and "expected the label on the image grid" in response.json()["detail"]
    assert _segmentations_of(service_settings, model.model_id) == 0


def test_oversize_uploads_are_413(
    api: TestClient, service_settings: Settings, model: Registered, scans: tuple[Path, Path]
) -> None:
    image_path, _ = scans
    limit = image_path.stat().st_size - 1
    api.app.state.settings = service_settings.model_copy(update={"max_upload_bytes": limit})  # type: ignore[attr-defined]
    response = api.post(f"/v1/models/{model.model_id}/segment", files=_files(image_path))
    assert response.status_code == 413 and f"expected an upload of at most {limit} bytes" in response.json()["detail"]
    api.app.state.settings = service_settings.model_copy(update={"max_voxels": 1000})  # type: ignore[attr-defined]
    response = api.post(f"/v1/models/{model.model_id}/segment", files=_files(image_path))
    assert response.status_code == 413 and "expected a volume of at most 1000 voxels" in response.json()["detail"]
    assert _segmentations_of(service_settings, model.model_id) == 0
    assert list((ArtifactStore(service_settings.artifact_root).root / "tmp").iterdir()) == []


def test_evaluation_is_queued_and_sent(api: TestClient, service_settings: Settings, model: Registered) -> None:
    path = f"/v1/models/{model.model_id}/evaluations"
    response = api.post(path, json={"dataset_id": model.dataset_id, "split": "val"})
    assert response.status_code == 202, response.text
    report = response.json()
    assert (report["source"], report["status"], report["split"]) == ("evaluation", "queued", "val")
    assert report["dataset_id"] == model.dataset_id and report["cases"] == [] and report["overlay_urls"] == {}
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get(Report, report["id"])
        assert row is not None and row.status == "queued" and row.model_id == model.model_id
    assert task_sent(service_settings, "mona.evaluate", report["id"])
    assert api.get(f"/v1/reports/{report['id']}").json() == report
    no_labels = api.post(path, json={"dataset_id": model.dataset_id, "split": "test"})
    assert no_labels.status_code == 422 and "expected labelled cases in split 'test'" in no_labels.json()["detail"]
    assert api.post(path, json={"dataset_id": model.dataset_id, "split": "holdout"}).status_code == 422
    assert api.post(path, json={"dataset_id": new_id()}).status_code == 404


def test_unknown_ids_are_404_everywhere(api: TestClient, model: Registered, scans: tuple[Path, Path]) -> None:
    unknown = new_id()
    gets = [
        f"/v1/models/{unknown}",
        f"/v1/models/{unknown}/onnx",
        f"/v1/models/{unknown}/manifest",
        f"/v1/segmentations/{unknown}",
        f"/v1/segmentations/{unknown}/mask",
        f"/v1/segmentations/{unknown}/overlay",
        f"/v1/reports/{unknown}",
        f"/v1/reports/{unknown}/overlay/case",
        "/v1/models/not-a-model-id",
    ]
    for path in gets:
        response = api.get(path)
        assert response.status_code == 404 and response.json()["detail"].startswith("expected"), path
    segment = api.post(f"/v1/models/{unknown}/segment", files=_files(scans[0]))
    assert segment.status_code == 404
    evaluation = api.post(f"/v1/models/{unknown}/evaluations", json={"dataset_id": model.dataset_id})
    assert evaluation.status_code == 404


def test_model_dir_and_segmenter_cache(service_settings: Settings, model: Registered, exported: Path) -> None:
    store = ArtifactStore(service_settings.artifact_root)
    with session_scope(service_settings.sqlalchemy_url) as session:
        row = session.get(Model, model.model_id)
        assert row is not None
        first, second = materialise_model_dir(store, row), materialise_model_dir(store, row)
    assert first == second == store.root / "models" / model.model_id
    assert (first / MODEL_FILE).read_bytes() == (exported / MODEL_FILE).read_bytes()
    cache = SegmenterCache(max_size=1, device="cpu")
    loaded = cache.get(first)
    assert cache.get(first) is loaded and len(cache) == 1
    cache.get(exported)
    assert len(cache) == 1 and cache.get(first) is not loaded


def test_case_ids_from_file_names_are_tame() -> None:
    assert case_id_from("patient001_frame01.nii.gz") == "patient001_frame01"
    assert case_id_from("C:\\scans\\a b/../x y.NII") == "x_y"
    assert case_id_from(None) == case_id_from("..nii") == "case"
