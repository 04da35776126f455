"""The compose stack, running for real (``make compose-up``), driven through ``mona_client`` as a user would, then
broken.

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

import pytest

from mona_client import Client
from mona_core.data.phantoms import write_phantom_case
from mona_core.io import read_image, read_label
from tests.services.conftest import wait_for
from tests.services.test_end_to_end import TINY, _upload_phantoms

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
STACK_URL = os.environ.get("MONA_STACK_URL")
Record = Callable[[str, object], None]
RESUMABLE = {"iterations": 400, "size": 32, "batch_size": 2, "val_every": 200, "checkpoint_every": 10, "log_every": 5}


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    if not STACK_URL:
        pytest.skip("no running stack (MONA_STACK_URL unset): .ci/run starts one with make compose-up")
    with Client(STACK_URL, os.environ["MONA_API_KEY"], timeout=120) as api:
        yield api


def compose(*args: str, timeout: float = 600) -> str:
    """``docker compose ARGS`` on this repository's stack (with the image choices ``make compose-up`` made)."""
    done = subprocess.run(
        [str(REPO / "deploy/local/compose"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"docker compose {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _job(client: Client, dataset_id: str, config: dict[str, Any]) -> dict[str, Any]:
    return client.create_job("supervised", dataset_id, config=config, labelled_patients=2, device="cpu")


@pytest.fixture(scope="module")
def trained(client: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dataset uploaded over REST and a supervised job trained on it by the CPU worker container."""
    dataset_id = _upload_phantoms(client, tmp_path_factory.mktemp("phantoms"))
    started = time.monotonic()
    job = client.wait(_job(client, dataset_id, TINY)["id"], timeout=600, poll=0.5, progress=False)
    return {"dataset_id": dataset_id, "job": job, "seconds": time.monotonic() - started}


def test_rest_flow_trains_segments_and_reports(
    client: Client, trained: dict[str, Any], tmp_path: Path, record_property: Record
) -> None:
    job = trained["job"]
    assert job["model_id"] and job["iteration"] == TINY["iterations"] and job["device"] == "cpu"
    record_property("stack: seconds to train a 6-iteration job (submit to succeeded)", round(trained["seconds"], 1))
    model = client.model(job["model_id"])
    assert model["job_id"] == job["id"]

    image, label = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
    write_phantom_case(image, label, seed=778, shape=(6, 64, 72))
    started = time.monotonic()
    summary = client.segment(job["model_id"], image, label, out=tmp_path / "mask.nii.gz")
    record_property("stack: seconds to segment one scan with a label", round(time.monotonic() - started, 2))
    mask, scan = read_label(tmp_path / "mask.nii.gz"), read_image(image)
    assert mask.geometry.matches(scan.geometry, tolerance=1e-6)
    report = client.report(summary["report_id"])
    assert report["status"] == "succeeded" and set(report["cases"][0]["classes"]) == {"RV", "Myo", "LV"}
    assert client.download(summary["overlay_url"], tmp_path / "overlay.png").read_bytes()[:4] == b"\x89PNG"


def test_a_killed_worker_container_resumes_its_job(
    client: Client, trained: dict[str, Any], record_property: Record
) -> None:
    job_id = _job(client, trained["dataset_id"], RESUMABLE)["id"]
    wait_for(lambda: client.job(job_id)["iteration"] >= 30, 600, interval=0.5, what="30 iterations")
    compose("kill", "-s", "KILL", "worker")
    killed_at = time.monotonic()
    compose("start", "worker")
    wait_for(lambda: client.job(job_id)["attempts"] == 2, 600, interval=0.5, what="the job's second attempt")
    record_property("stack: seconds from the worker's SIGKILL to the job resumed", round(time.monotonic() - killed_at))
    job = client.wait(job_id, timeout=600, poll=0.5, progress=False)
    took = round(time.monotonic() - killed_at)
    record_property("stack: seconds from the worker's SIGKILL to the job succeeded", took)
    assert job["attempts"] == 2 and job["iteration"] == RESUMABLE["iterations"]
    lines = [line["message"] for line in client.logs(job_id)]
    resumed = [line for line in lines if line.startswith("resuming from step")]
    assert resumed, lines
    step = int(resumed[0].split()[3])
    # 30 iterations were reported before the kill and a checkpoint is written every 10: the run went on from one.
    assert 30 <= step < RESUMABLE["iterations"], f"expected a checkpoint of the first attempt, got step {step}"


def test_data_survives_down_and_up(client: Client, trained: dict[str, Any], record_property: Record) -> None:
    compose("down")
    started = time.monotonic()
    compose("up", "-d", "--wait", "--wait-timeout", "300")
    record_property("stack: seconds from up (images built) to healthy", round(time.monotonic() - started, 1))
    job = trained["job"]
    assert client.dataset(trained["dataset_id"])["n_cases"] > 0
    assert client.job(job["id"])["status"] == "succeeded"
    model = client.model(job["model_id"])
    onnx = client.request("GET", f"/v1/models/{model['id']}/onnx", headers={"Accept": "*/*"})
    assert onnx.status_code == 200, "the model file is on the volume"
