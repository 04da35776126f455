"""The Python client (``mona_client``) against a real API under uvicorn with a real worker, and against a real HTTP
server that answers 503 before it answers 200 (the retries)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mona_client import ApiError, AsyncClient, Client, JobFailed
from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case, write_phantom_dataset
from mona_core.io import read_image, read_label
from services.embedded import free_port
from tests.services.conftest import API_KEY
from tests.services.test_end_to_end import SHAPE, TINY


def test_the_client_runs_the_whole_flow(live_api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_phantom_dataset(tmp_path / "phantoms", n_patients=4, frames=1, seed=0, val_patients=1, shape=SHAPE)
    with Client(live_api_url, API_KEY) as mona:
        assert mona.me()["admin"] is True
        dataset = mona.create_dataset("client", list(PHANTOM_CLASSES))
        for image in sorted((data / "imagesTr").glob("*.nii.gz")):
            case_id = image.name.removesuffix("_0000.nii.gz")
            split = "val" if case_id.startswith("patient004") else "train"
            mona.upload_case(dataset["id"], image, data / "labelsTr" / f"{case_id}.nii.gz", split=split)
        cases = mona.cases(dataset["id"])
        assert cases.total == len(cases) == 4
        assert dataset["id"] in [row["id"] for row in mona.datasets()]

        job = mona.create_job("supervised", dataset["id"], TINY, labelled_patients=2, device="cpu")
        done = mona.wait(job["id"], timeout=240, poll=0.5)
        assert done["status"] == "succeeded" and done["model_id"]
        assert "%" in capsys.readouterr().err, "wait shows a progress bar"
        assert [row["step"] for row in mona.metrics(job["id"])] == list(range(1, TINY["iterations"] + 1))
        assert mona.loss_curve(job["id"], tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")

        scan, label = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
        write_phantom_case(scan, label, seed=99, shape=SHAPE)
        summary = mona.segment(done["model_id"], scan, label, out=tmp_path / "mask.nii.gz")
        assert read_label(tmp_path / "mask.nii.gz").geometry.matches(read_image(scan).geometry, tolerance=1e-6)
        assert set(mona.report(summary["report_id"])["cases"][0]["classes"]) == {"RV", "Myo", "LV"}

        with pytest.raises(ApiError) as missing:
            mona.job("0" * 32)
        assert missing.value.status == 404 and "expected the id of an existing job" in missing.value.detail

        cancelled = mona.create_job("supervised", dataset["id"], {**TINY, "iterations": 5000}, labelled_patients=2)
        mona.cancel(cancelled["id"])
        with pytest.raises(JobFailed) as failed:
            mona.wait(cancelled["id"], timeout=120, progress=False)
        assert failed.value.job["status"] == "cancelled"

        mona.delete("segmentations", summary["id"])
        with pytest.raises(ApiError):
            mona.segmentation(summary["id"])


def test_the_async_client(live_api_url: str) -> None:
    async def scenario() -> tuple[dict[str, object], int]:
        async with AsyncClient(live_api_url, API_KEY) as mona:
            me = await mona.me()
            page = await mona.get("/v1/jobs", limit=1)
            return me, int(page["limit"])

    me, limit = asyncio.run(scenario())
    assert me["admin"] is True and limit == 1


class _Flaky:
    """A real HTTP server whose ``/v1/me`` answers 503 ``failures`` times, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        app = Starlette(routes=[Route("/v1/me", self.me)])
        self.port = free_port("127.0.0.1")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def me(self, request: Request) -> JSONResponse:
        del request
        self.calls += 1
        if self.calls <= self.failures:
            return JSONResponse({"detail": "expected a reachable database, got none"}, status_code=503)
        return JSONResponse({"key_id": "k", "project": "default", "admin": False})

    def __enter__(self) -> _Flaky:
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_503_is_retried_then_raised() -> None:
    with _Flaky(failures=2) as flaky, Client(f"http://127.0.0.1:{flaky.port}", "k", backoff=0.01) as mona:
        assert mona.me()["project"] == "default" and flaky.calls == 3
    with _Flaky(failures=100) as flaky, Client(f"http://127.0.0.1:{flaky.port}", "k", retries=2, backoff=0.01) as mona:
        with pytest.raises(ApiError) as down:
            mona.me()
        assert down.value.status == 503 and flaky.calls == 3 and "database" in down.value.detail
