"""Job-finished webhooks, received by a real HTTP server: signed with HMAC-SHA256 over the raw body, retried after a
5xx, not after a 4xx, sent when a job succeeds (worker), is cancelled while queued (API) or fails."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.main import create_app
from services.common.db import session_scope
from services.common.models import TrainingJob
from services.common.settings import Settings
from services.common.webhooks import SIGNATURE_HEADER, notify_job_finished
from services.embedded import free_port
from services.worker.training import run_training_job
from tests.services.conftest import API_KEY
from tests.services.test_jobs_api import insert_dataset, job_body
from tests.services.test_worker import log_lines, make_dataset, make_job

SECRET = "webhook-secret-for-tests"


class Receiver:
    """A real HTTP server that records every POST and answers the given statuses in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.port = free_port("127.0.0.1")
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=abc"

    async def hook(self, request: Request) -> Response:
        self.received.append((await request.body(), dict(request.headers)))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    def __enter__(self) -> Receiver:
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in self.received]


def signed_by(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)


@pytest.fixture()
def settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"webhook_secret": SECRET})


@pytest.fixture()
def api(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as client:
        yield client


def test_a_cancelled_queued_job_is_announced_signed_and_retried(api: TestClient, settings: Settings) -> None:
    with Receiver([500]) as receiver:
        job = api.post("/v1/jobs", json=job_body(insert_dataset(settings), callback_url=receiver.url)).json()
        assert job["callback_url"] == receiver.url
        assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert len(receiver.received) == 2, "the 500 was retried once"
    body, headers = receiver.received[-1]
    assert signed_by(SECRET, body, headers) and not signed_by("another secret", body, headers)
    assert headers["x-mona-event"] == "job.finished"
    payload = receiver.payloads()[-1]
    assert payload["event"] == "job.finished" and payload["job"]["id"] == job["id"]
    assert payload["job"]["status"] == "cancelled" and payload["job"]["finished_at"]
    messages = [message for _, message in log_lines(settings, job["id"])]
    assert any("webhook delivered" in message and "try 2" in message for message in messages), messages
    assert not any("token=abc" in message for message in messages), "the URL's query stays out of the log"


def test_a_trained_job_is_announced_by_its_worker(settings: Settings, tmp_path: Path) -> None:
    job_id = make_job(settings, make_dataset(settings, tmp_path, patients=3, frames=1), labelled_patients=2)
    with Receiver([]) as receiver:
        with session_scope(settings.sqlalchemy_url) as session:
            session.get_one(TrainingJob, job_id).callback_url = receiver.url
        assert run_training_job(settings, job_id) == "succeeded"
    (payload,) = receiver.payloads()
    assert payload["job"]["status"] == "succeeded" and payload["job"]["model_id"]


def test_a_refusing_receiver_is_not_retried_and_no_secret_no_webhook(
    api: TestClient, settings: Settings, service_settings: Settings
) -> None:
    with Receiver([410]) as receiver:
        job = api.post("/v1/jobs", json=job_body(insert_dataset(settings), callback_url=receiver.url)).json()
        api.post(f"/v1/jobs/{job['id']}/cancel")
    assert len(receiver.received) == 1
    assert any("failed after 1 tries (last: HTTP 410)" in message for _, message in log_lines(settings, job["id"]))
    assert notify_job_finished(settings, insert_and_finish(settings)) is None, "no callback_url: nothing to send"

    with TestClient(create_app(service_settings), headers={"X-API-Key": API_KEY}) as plain:
        body = job_body(insert_dataset(service_settings), callback_url="http://127.0.0.1:9/hook")
        refused = plain.post("/v1/jobs", json=body)
    assert refused.status_code == 422 and "MONA_WEBHOOK_SECRET" in refused.text
    bad = api.post("/v1/jobs", json=job_body(insert_dataset(settings), callback_url="ftp://example.org/x"))
    assert bad.status_code == 422


def insert_and_finish(settings: Settings) -> str:
    return make_job(settings, insert_dataset(settings), status="cancelled")
