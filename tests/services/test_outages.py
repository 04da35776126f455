"""Outages of the real parts, injected by stopping, hanging (SIGSTOP) and restarting servers of the test's own.

Each test gets a Postgres and a Redis that only this module uses (``tests/services/faults.py``), so stopping them
disturbs no other test. Figures (seconds from the fault to the 503, from the recovery to the 200) are attached to
each test's report with ``record_property``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from mona_core.training.progress import ProgressEvent
from services.api.main import create_app
from services.common.db import DbTimeouts, make_engine, session_scope
from services.common.deadlines import GRACE_S
from services.common.jobs import claim_job
from services.common.models import Dataset, JobMetric, TrainingJob
from services.common.settings import Settings
from services.worker.training import ProgressWriter
from tests.services import faults
from tests.services.conftest import API_KEY
from tests.services.faults import PostgresServer, RedisServer
from tests.services.test_jobs_api import insert_dataset, job_body

Record = Callable[[str, object], None]
fault_postgres, fault_redis, fault_settings = faults.fault_postgres, faults.fault_redis, faults.fault_settings


@pytest.fixture()
def client(fault_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(fault_settings), headers={"X-API-Key": API_KEY}) as api:
        yield api


def timed(call: Callable[[], Response], limit: float) -> tuple[Response, float]:
    """``call()`` in a thread, failing the test (instead of hanging it) when it takes over ``limit`` seconds."""
    answer: list[Response] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: answer.append(call()), daemon=True)
    thread.start()
    thread.join(limit)
    elapsed = time.monotonic() - started
    if not answer:
        pytest.fail(f"expected an answer within {limit:.0f} s, got none after {elapsed:.1f} s")
    return answer[0], elapsed


def until_status(client: TestClient, path: str, code: int, timeout: float = 20) -> float:
    """Seconds until ``path`` answers ``code`` (polled), or fail after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if client.get(path).status_code == code:
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"expected {path} to answer {code} within {timeout:.0f} s")


def assert_clean_503(response: Response, port: int) -> dict[str, Any]:
    """A JSON 503 that names no host, port or URL."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    for secret in ("127.0.0.1", "localhost", str(port), "postgres", "redis://"):
        assert secret not in response.text, f"expected no {secret!r} in the 503, got {response.text}"
    return body


def test_database_stopped_answers_503_json_fast_and_recovers(
    client: TestClient, fault_postgres: PostgresServer, record_property: Record
) -> None:
    assert client.get("/v1/datasets").status_code == 200
    fault_postgres.stop()
    response, to_503 = timed(lambda: client.get("/v1/datasets"), limit=10)
    assert "expected a reachable database" in assert_clean_503(response, fault_postgres.port)["detail"]
    assert to_503 < 5
    ready, _ = timed(lambda: client.get("/readyz"), limit=10)
    assert assert_clean_503(ready, fault_postgres.port)["checks"] == {"database": "unavailable", "broker": "ok"}
    for path in ("/v1/jobs", "/v1/models", "/v1/datasets/nothing-here"):
        assert_clean_503(timed(partial(client.get, path), limit=10)[0], fault_postgres.port)
    fault_postgres.start()
    to_200 = until_status(client, "/v1/datasets", 200)
    assert client.get("/readyz").status_code == 200
    record_property("database stopped: seconds to 503", round(to_503, 3))
    record_property("database restarted: seconds to 200", round(to_200, 3))


def test_hung_database_answers_503_within_the_timeouts(
    client: TestClient, fault_settings: Settings, fault_postgres: PostgresServer, record_property: Record
) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/datasets").status_code == 200
    fault_postgres.pause()
    try:
        ready, to_ready_503 = timed(lambda: client.get("/readyz"), limit=10)
        body = assert_clean_503(ready, fault_postgres.port)
        assert body["checks"]["database"] in ("timed out", "unavailable") and body["checks"]["broker"] == "ok"
        assert to_ready_503 < fault_settings.ready_timeout_s + 1.5
        response, to_503 = timed(lambda: client.get("/v1/datasets"), limit=20)
        assert_clean_503(response, fault_postgres.port)
        assert to_503 < fault_settings.db_connect_timeout_s * 1.5 + 2  # a deadlined ping, then a bounded connect
    finally:
        fault_postgres.resume()
    to_200 = until_status(client, "/v1/datasets", 200)
    assert client.get("/readyz").status_code == 200
    record_property("database hung: seconds to /readyz 503", round(to_ready_503, 3))
    record_property("database hung: seconds to /v1 503", round(to_503, 3))
    record_property("database resumed: seconds to 200", round(to_200, 3))


def test_statements_end_at_their_deadlines_on_a_slow_or_hung_server(
    fault_postgres: PostgresServer, record_property: Record
) -> None:
    engine = make_engine(fault_postgres.url, DbTimeouts(connect_s=2, statement_s=0.5, pool_s=2))
    try:
        with engine.connect() as connection, pytest.raises(OperationalError, match="statement timeout"):
            connection.execute(text("SELECT pg_sleep(5)"))
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            fault_postgres.pause()
            started = time.monotonic()
            try:
                with pytest.raises(OperationalError):
                    connection.execute(text("SELECT 1"))
            finally:
                fault_postgres.resume()
            hung_for = time.monotonic() - started
        assert hung_for < 0.5 + GRACE_S + 1
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    record_property("hung server: seconds until a statement fails", round(hung_for, 3))


def _record_outcome(call: Callable[[], object], outcome: list[BaseException | None]) -> None:
    """``call()``, appending the database error it raised (or None) to ``outcome``."""
    try:
        call()
    except SQLAlchemyError as exc:
        outcome.append(exc)
        return
    outcome.append(None)


def test_commit_and_rollback_end_at_their_deadline_on_a_hung_server(
    fault_postgres: PostgresServer, record_property: Record
) -> None:
    engine = make_engine(fault_postgres.url, DbTimeouts(connect_s=2, statement_s=0.5, pool_s=2))
    limit = 0.5 + GRACE_S + 1
    try:
        for end in ("commit", "rollback"):
            connection = engine.connect()
            connection.execute(text("SELECT 1"))
            outcome: list[BaseException | None] = []
            worker = threading.Thread(target=_record_outcome, args=(getattr(connection, end), outcome), daemon=True)
            fault_postgres.pause()
            started = time.monotonic()
            try:
                worker.start()
                worker.join(limit)
                hung_for = time.monotonic() - started
            finally:
                fault_postgres.resume()
                worker.join(30)
                connection.close()
            assert hung_for < limit and outcome, f"{end} on a hung server still waiting after {hung_for:.1f} s"
            assert isinstance(outcome[0], OperationalError), f"expected OperationalError, got {outcome[0]!r}"
            record_property(f"hung server: seconds until a {end} fails", round(hung_for, 3))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_broker_stopped_fails_readiness_and_recovers(
    client: TestClient, fault_redis: RedisServer, record_property: Record
) -> None:
    assert client.get("/readyz").status_code == 200
    fault_redis.stop()
    ready, to_503 = timed(lambda: client.get("/readyz"), limit=10)
    assert assert_clean_503(ready, fault_redis.port)["checks"] == {"database": "ok", "broker": "unavailable"}
    fault_redis.start()
    to_200 = until_status(client, "/readyz", 200)
    record_property("broker stopped: seconds to /readyz 503", round(to_503, 3))
    record_property("broker restarted: seconds to /readyz 200", round(to_200, 3))


def test_broker_stopped_refuses_a_job_with_a_clean_503_and_recovers(
    client: TestClient, fault_settings: Settings, fault_redis: RedisServer, record_property: Record
) -> None:
    dataset_id = insert_dataset(fault_settings)
    fault_redis.stop()
    response, to_503 = timed(lambda: client.post("/v1/jobs", json=job_body(dataset_id)), limit=30)
    assert "expected a reachable task broker" in assert_clean_503(response, fault_redis.port)["detail"]
    fault_redis.start()
    accepted, _ = timed(lambda: client.post("/v1/jobs", json=job_body(dataset_id)), limit=30)
    assert accepted.status_code == 202, accepted.text
    record_property("broker stopped: seconds to POST /v1/jobs 503", round(to_503, 3))


def _event(step: int, total: int) -> ProgressEvent:
    return ProgressEvent("train", step, total, {"loss": 1.0 / step}, 0.01, None, None, 0.1 * step, 1.0)


def _queued_job(settings: Settings) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        dataset = Dataset(name="outage", preset="mri", classes=["background", "organ"])
        session.add(dataset)
        session.flush()
        job = TrainingJob(kind="supervised", dataset_id=dataset.id, config={})
        session.add(job)
        session.flush()
        return job.id


def _metric_steps(settings: Settings, job_id: str) -> list[int]:
    with session_scope(settings.sqlalchemy_url) as session:
        return list(session.scalars(select(JobMetric.step).where(JobMetric.job_id == job_id).order_by(JobMetric.id)))


def test_progress_written_during_a_database_outage_is_kept_and_written_once(
    fault_settings: Settings, fault_postgres: PostgresServer, record_property: Record
) -> None:
    job_id, url = _queued_job(fault_settings), fault_settings.sqlalchemy_url
    with session_scope(url) as session:
        assert claim_job(session, job_id, "outage:1", fault_settings.stale_job_seconds)
    writer = ProgressWriter(url, job_id, "outage:1", attempt=1, min_interval=0.0)
    for step in range(1, 6):
        writer(_event(step, 12))
    fault_postgres.stop()
    for step in range(6, 11):
        writer(_event(step, 12))
    assert writer.buffered == 5
    fault_postgres.start()
    for step in range(11, 13):
        writer(_event(step, 12))
    assert writer.buffered == 0
    assert _metric_steps(fault_settings, job_id) == list(range(1, 13))
    with session_scope(url) as session:
        assert session.get_one(TrainingJob, job_id).iteration == 12
    record_property("metric rows lost in the outage", 12 - len(set(_metric_steps(fault_settings, job_id))))


def test_progress_buffer_is_bounded(fault_settings: Settings, fault_postgres: PostgresServer) -> None:
    job_id, url = _queued_job(fault_settings), fault_settings.sqlalchemy_url
    writer = ProgressWriter(url, job_id, "outage:1", attempt=1, min_interval=0.0, max_buffered=3)
    fault_postgres.stop()
    for step in range(1, 6):
        writer(_event(step, 5))
    assert writer.buffered == 3
    fault_postgres.start()
    assert writer.flush() and writer.buffered == 0
    assert _metric_steps(fault_settings, job_id) == [3, 4, 5]
