"""End to end over real HTTP (uvicorn) with a real worker process, on the test backend (Postgres + Redis in CI),
driven through the project's own client (``mona_client``) as a user would: upload phantoms → supervised job →
model → segment (geometry identical to the input) → report rows in the database; an asynchronous evaluation; and
cancelling a running job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mona_client import Client, JobFailed
from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case, write_phantom_dataset
from mona_core.io import read_image, read_label
from services.common.db import session_scope
from services.common.models import Report, ReportEntry
from services.common.settings import Settings
from tests.services.conftest import API_KEY, wait_for

SHAPE = (6, 64, 72)
TINY = {"iterations": 6, "size": 32, "batch_size": 2, "val_every": 3, "checkpoint_every": 3, "log_every": 1}


@pytest.fixture()
def live(live_api_url: str) -> Iterator[Client]:
    """The project's client of the API under uvicorn with one real worker (``live_api_url``)."""
    with Client(live_api_url, API_KEY, timeout=120) as client:
        yield client


def _upload_phantoms(client: Client, root: Path, project: str | None = None) -> str:
    data = write_phantom_dataset(root, n_patients=4, frames=1, seed=0, val_patients=1, shape=SHAPE)
    dataset = client.create_dataset("e2e", list(PHANTOM_CLASSES), project=project)
    splits = json.loads((data / "splits.json").read_text())
    for split, case_ids in splits.items():
        for case_id in case_ids:
            image, label = data / "imagesTr" / f"{case_id}_0000.nii.gz", data / "labelsTr" / f"{case_id}.nii.gz"
            client.upload_case(dataset["id"], image, label, split=split)
    assert client.cases(dataset["id"]).total == sum(len(ids) for ids in splits.values())
    return str(dataset["id"])


def test_upload_train_segment_report(live: Client, isolated_settings: Settings, tmp_path: Path) -> None:
    dataset_id = _upload_phantoms(live, tmp_path / "phantoms", project="cardiology")
    config = {**TINY, "postprocess": "largest_component"}
    job = live.create_job("supervised", dataset_id, config=config, labelled_patients=2, device="cpu")
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["project"] == "cardiology"
    job = live.wait(job["id"], timeout=240, poll=0.5, progress=False)
    assert job["progress"] == 1.0 and job["model_id"] and job["iteration"] == TINY["iterations"]
    assert job["config"]["iterations"] == TINY["iterations"] and job["config"]["lr"] == 0.01, "defaults filled in"
    model = live.model(job["model_id"])
    assert model["project"] == "cardiology", "the model joins its job's"
    assert model["postprocess"] == "largest_component", "the job's post-processing reaches its model"
    assert model["metrics"]["parity"]["max_abs_diff_random"] <= model["metrics"]["parity"]["tolerance"]
    assert len(job["selection"]["labelled"]) == 2
    history = live.metrics(job["id"])
    assert [row["step"] for row in history] == list(range(1, TINY["iterations"] + 1))
    assert any("claimed" in line["message"] for line in live.logs(job["id"]))
    assert live.loss_curve(job["id"], tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")

    image, label = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
    write_phantom_case(image, label, seed=777, shape=SHAPE)
    summary = live.segment(job["model_id"], image, label, out=tmp_path / "mask.nii.gz")
    mask, scan = read_label(tmp_path / "mask.nii.gz"), read_image(image)
    assert (mask.geometry.size, mask.geometry.spacing, mask.geometry.origin) == (
        scan.geometry.size,
        scan.geometry.spacing,
        scan.geometry.origin,
    )
    assert mask.geometry.matches(scan.geometry, tolerance=1e-6)
    assert live.download(summary["overlay_url"], tmp_path / "overlay.png").read_bytes().startswith(b"\x89PNG")

    report = live.report(summary["report_id"])
    assert set(report["cases"][0]["classes"]) == {"RV", "Myo", "LV"}
    with session_scope(isolated_settings.sqlalchemy_url) as session:
        assert session.get_one(Report, report["id"]).status == "succeeded"
        entries = session.scalar(select(func.count()).where(ReportEntry.report_id == report["id"]))
    assert entries == 3


def test_evaluation_job_and_cancel(live: Client, tmp_path: Path) -> None:
    dataset_id = _upload_phantoms(live, tmp_path / "phantoms")
    job = live.create_job("supervised", dataset_id, config=TINY, labelled_patients=2, device="cpu")
    model_id = live.wait(job["id"], timeout=240, poll=0.5, progress=False)["model_id"]
    evaluation = live.evaluate(model_id, dataset_id)
    report = live.wait_report(evaluation["id"], timeout=240, poll=0.5)
    assert len(report["cases"]) == 1 and report["summary"]["mean"]["dice"] is not None
    overlay = live.download(report["overlay_urls"][report["cases"][0]["case_id"]], tmp_path / "overlay.png")
    assert overlay.read_bytes()[:4] == b"\x89PNG"

    long_config = {**TINY, "iterations": 20_000, "val_every": 10_000, "checkpoint_every": 50}
    job = live.create_job("supervised", dataset_id, config=long_config, labelled_patients=2, device="cpu")
    wait_for(lambda: live.job(job["id"])["iteration"] > 0, 120, what="the long job to start")
    live.cancel(job["id"])
    with pytest.raises(JobFailed) as ended:
        live.wait(job["id"], timeout=60, poll=0.5, progress=False)
    cancelled = ended.value.job
    assert cancelled["status"] == "cancelled" and 0 < cancelled["iteration"] < 20_000
    assert cancelled["finished_at"] is not None
