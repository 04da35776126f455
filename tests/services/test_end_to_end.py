"""End to end over real HTTP (uvicorn) with a real worker process, on the test backend (Postgres + Redis in CI):
upload phantoms → supervised job → model → segment (geometry identical to the input) → report rows in the database;
an asynchronous evaluation; and cancelling a running job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case, write_phantom_dataset
from mona_core.io import read_image, read_label
from services.common.db import session_scope
from services.common.models import Report, ReportEntry
from services.common.settings import Settings
from tests.services.conftest import API_KEY, wait_for

SHAPE = (6, 64, 72)
TINY = {"iterations": 6, "size": 32, "batch_size": 2, "val_every": 3, "checkpoint_every": 3, "log_every": 1}


@pytest.fixture()
def live(live_api_url: str) -> Iterator[httpx.Client]:
    """A client of the API under uvicorn with one real worker (``live_api_url``)."""
    with httpx.Client(base_url=live_api_url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
        yield client


def _ok(response: httpx.Response, code: int = 200) -> Any:
    assert response.status_code == code, response.text
    return response.json()


def _upload_phantoms(client: httpx.Client, root: Path, project: str | None = None) -> str:
    data = write_phantom_dataset(root, n_patients=4, frames=1, seed=0, val_patients=1, shape=SHAPE)
    body = {"name": "e2e", "classes": list(PHANTOM_CLASSES), "project": project}
    dataset = _ok(client.post("/v1/datasets", json=body), 201)
    splits = json.loads((data / "splits.json").read_text())
    for split, case_ids in splits.items():
        for case_id in case_ids:
            image, label = data / "imagesTr" / f"{case_id}_0000.nii.gz", data / "labelsTr" / f"{case_id}.nii.gz"
            files = {"image": (image.name, image.read_bytes()), "label": (label.name, label.read_bytes())}
            _ok(client.post(f"/v1/datasets/{dataset['id']}/cases", files=files, data={"split": split}), 201)
    return str(dataset["id"])


def _wait_for_status(client: httpx.Client, path: str, wanted: str, timeout: float = 240) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def done() -> bool:
        state.update(_ok(client.get(path)))
        assert state["status"] != "failed", state.get("error")
        return bool(state["status"] == wanted)

    wait_for(done, timeout, what=f"{path} to be {wanted}")
    return state


def test_upload_train_segment_report(live: httpx.Client, isolated_settings: Settings, tmp_path: Path) -> None:
    dataset_id = _upload_phantoms(live, tmp_path / "phantoms", project="cardiology")
    body = {"kind": "supervised", "dataset_id": dataset_id, "labelled_patients": 2, "config": TINY, "device": "cpu"}
    job = _ok(live.post("/v1/jobs", json=body), 202)
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["project"] == "cardiology"
    job = _wait_for_status(live, f"/v1/jobs/{job['id']}", "succeeded")
    assert job["progress"] == 1.0 and job["model_id"] and job["iteration"] == TINY["iterations"]
    assert _ok(live.get(f"/v1/models/{job['model_id']}"))["project"] == "cardiology", "the model joins its job's"
    assert len(job["selection"]["labelled"]) == 2
    history = _ok(live.get(f"/v1/jobs/{job['id']}/metrics"))["history"]
    assert [row["step"] for row in history] == list(range(1, TINY["iterations"] + 1))
    assert any("claimed" in line["message"] for line in _ok(live.get(f"/v1/jobs/{job['id']}/logs"))["lines"])
    curve = live.get(f"/v1/jobs/{job['id']}/loss_curve.png")
    assert curve.status_code == 200 and curve.content.startswith(b"\x89PNG"), curve.text[:200]

    image, label = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
    write_phantom_case(image, label, seed=777, shape=SHAPE)
    files = {"image": (image.name, image.read_bytes()), "label": (label.name, label.read_bytes())}
    response = live.post(f"/v1/models/{job['model_id']}/segment", files=files)
    assert response.status_code == 200, response.text
    (tmp_path / "mask.nii.gz").write_bytes(response.content)
    mask, scan = read_label(tmp_path / "mask.nii.gz"), read_image(image)
    assert (mask.geometry.size, mask.geometry.spacing, mask.geometry.origin) == (
        scan.geometry.size,
        scan.geometry.spacing,
        scan.geometry.origin,
    )
    assert mask.geometry.matches(scan.geometry, tolerance=1e-6)

    report = _ok(live.get(f"/v1/reports/{response.headers['X-Report-Id']}"))
    assert set(report["cases"][0]["classes"]) == {"RV", "Myo", "LV"}
    with session_scope(isolated_settings.sqlalchemy_url) as session:
        assert session.get_one(Report, report["id"]).status == "succeeded"
        entries = session.scalar(select(func.count()).where(ReportEntry.report_id == report["id"]))
    assert entries == 3


def test_evaluation_job_and_cancel(live: httpx.Client, tmp_path: Path) -> None:
    dataset_id = _upload_phantoms(live, tmp_path / "phantoms")
    body = {"kind": "supervised", "dataset_id": dataset_id, "labelled_patients": 2, "config": TINY, "device": "cpu"}
    model_id = _wait_for_status(live, f"/v1/jobs/{_ok(live.post('/v1/jobs', json=body), 202)['id']}", "succeeded")[
        "model_id"
    ]
    evaluation = _ok(live.post(f"/v1/models/{model_id}/evaluations", json={"dataset_id": dataset_id}), 202)
    report = _wait_for_status(live, f"/v1/reports/{evaluation['id']}", "succeeded")
    assert len(report["cases"]) == 1 and report["summary"]["mean"]["dice"] is not None
    overlay = live.get(report["overlay_urls"][report["cases"][0]["case_id"]])
    assert overlay.status_code == 200 and overlay.content[:4] == b"\x89PNG"

    long_job = {**body, "config": {**TINY, "iterations": 20_000, "val_every": 10_000, "checkpoint_every": 50}}
    job = _ok(live.post("/v1/jobs", json=long_job), 202)
    wait_for(lambda: _ok(live.get(f"/v1/jobs/{job['id']}"))["iteration"] > 0, 120, what="the long job to start")
    _ok(live.post(f"/v1/jobs/{job['id']}/cancel"))
    cancelled = _wait_for_status(live, f"/v1/jobs/{job['id']}", "cancelled", timeout=60)
    assert 0 < cancelled["iteration"] < 20_000 and cancelled["finished_at"] is not None
