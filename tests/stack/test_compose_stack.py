"""The compose stack, running for real (``make compose-up``), driven over REST as a user would, then broken.

1. Upload phantoms, train a supervised job on the CPU worker, get its model, segment a scan (the mask comes back on
   the input's grid) with a label, read the report.
2. ``docker compose kill -s KILL worker`` in the middle of a job, then ``start``: the job resumes from its last
   checkpoint (a second attempt) and succeeds.
3. ``docker compose down`` then up again: datasets, jobs and models are still there (the volumes kept them).

Skipped unless ``MONA_STACK_URL`` points at the running stack's API (``.ci/run`` sets it after ``make compose-up``,
with ``MONA_API_KEY`` and a short ``MONA_STALE_JOB_SECONDS``). Figures (job, segment and resume seconds) are attached
with ``record_property``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mona_core.data.phantoms import write_phantom_case
from mona_core.io import read_image, read_label
from tests.services.conftest import wait_for
from tests.services.test_end_to_end import TINY, _ok, _upload_phantoms, _wait_for_status

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
STACK_URL = os.environ.get("MONA_STACK_URL")
Record = Callable[[str, object], None]
RESUMABLE = {"iterations": 400, "size": 32, "batch_size": 2, "val_every": 200, "checkpoint_every": 10, "log_every": 5}


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    if not STACK_URL:
        pytest.skip("no running stack (MONA_STACK_URL unset): .ci/run starts one with make compose-up")
    key = os.environ["MONA_API_KEY"]
    with httpx.Client(base_url=STACK_URL, headers={"X-API-Key": key}, timeout=120) as api:
        yield api


def compose(*args: str, timeout: float = 600) -> str:
    """``docker compose ARGS`` on this repository's stack (with the image choices ``make compose-up`` made)."""
    done = subprocess.run(
        [str(REPO / "deploy/local/compose"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"docker compose {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _job(client: httpx.Client, dataset_id: str, config: dict[str, Any]) -> dict[str, Any]:
    body = {"kind": "supervised", "dataset_id": dataset_id, "labelled_patients": 2, "config": config, "device": "cpu"}
    job: dict[str, Any] = _ok(client.post("/v1/jobs", json=body), 202)
    return job


@pytest.fixture(scope="module")
def trained(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dataset uploaded over REST and a supervised job trained on it by the CPU worker container."""
    dataset_id = _upload_phantoms(client, tmp_path_factory.mktemp("phantoms"))
    started = time.monotonic()
    job = _wait_for_status(client, f"/v1/jobs/{_job(client, dataset_id, TINY)['id']}", "succeeded", timeout=600)
    return {"dataset_id": dataset_id, "job": job, "seconds": time.monotonic() - started}


def test_rest_flow_trains_segments_and_reports(
    client: httpx.Client, trained: dict[str, Any], tmp_path: Path, record_property: Record
) -> None:
    job = trained["job"]
    assert job["model_id"] and job["iteration"] == TINY["iterations"] and job["device"] == "cpu"
    record_property("stack: seconds to train a 6-iteration job (submit to succeeded)", round(trained["seconds"], 1))
    model = _ok(client.get(f"/v1/models/{job['model_id']}"))
    assert model["job_id"] == job["id"]

    image, label = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
    write_phantom_case(image, label, seed=778, shape=(6, 64, 72))
    files = {"image": (image.name, image.read_bytes()), "label": (label.name, label.read_bytes())}
    started = time.monotonic()
    response = client.post(f"/v1/models/{job['model_id']}/segment", files=files)
    record_property("stack: seconds to segment one scan with a label", round(time.monotonic() - started, 2))
    assert response.status_code == 200, response.text
    (tmp_path / "mask.nii.gz").write_bytes(response.content)
    mask, scan = read_label(tmp_path / "mask.nii.gz"), read_image(image)
    assert mask.geometry.matches(scan.geometry, tolerance=1e-6)
    report = _ok(client.get(f"/v1/reports/{response.headers['X-Report-Id']}"))
    assert report["status"] == "succeeded" and set(report["cases"][0]["classes"]) == {"RV", "Myo", "LV"}


def test_a_killed_worker_container_resumes_its_job(
    client: httpx.Client, trained: dict[str, Any], record_property: Record
) -> None:
    job_id = _job(client, trained["dataset_id"], RESUMABLE)["id"]
    path = f"/v1/jobs/{job_id}"
    wait_for(lambda: _ok(client.get(path))["iteration"] >= 30, 600, interval=0.5, what="30 iterations")
    compose("kill", "-s", "KILL", "worker")
    killed_at = time.monotonic()
    compose("start", "worker")
    wait_for(lambda: _ok(client.get(path))["attempts"] == 2, 600, interval=0.5, what="the job's second attempt")
    record_property("stack: seconds from the worker's SIGKILL to the job resumed", round(time.monotonic() - killed_at))
    job = _wait_for_status(client, path, "succeeded", timeout=600)
    took = round(time.monotonic() - killed_at)
    record_property("stack: seconds from the worker's SIGKILL to the job succeeded", took)
    assert job["attempts"] == 2 and job["iteration"] == RESUMABLE["iterations"]
    lines = [line["message"] for line in _ok(client.get(f"{path}/logs"))["lines"]]
    resumed = [line for line in lines if line.startswith("resuming from step")]
    assert resumed, lines
    step = int(resumed[0].split()[3])
    # 30 iterations were reported before the kill and a checkpoint is written every 10: the run went on from one.
    assert 30 <= step < RESUMABLE["iterations"], f"expected a checkpoint of the first attempt, got step {step}"


def test_data_survives_down_and_up(client: httpx.Client, trained: dict[str, Any], record_property: Record) -> None:
    compose("down")
    started = time.monotonic()
    compose("up", "-d", "--wait", "--wait-timeout", "300")
    record_property("stack: seconds from up (images built) to healthy", round(time.monotonic() - started, 1))
    job = trained["job"]
    assert _ok(client.get(f"/v1/datasets/{trained['dataset_id']}"))["n_cases"] > 0
    assert _ok(client.get(f"/v1/jobs/{job['id']}"))["status"] == "succeeded"
    model = _ok(client.get(f"/v1/models/{job['model_id']}"))
    assert client.get(f"/v1/models/{model['id']}/onnx").status_code == 200, "the model file is on the volume"
