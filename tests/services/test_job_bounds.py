"""Bounds at the door: a corpus of bad job, study and dataset requests, each a 422 naming the field, never a 5xx.

Bodies are sent as raw JSON text so that NaN, Infinity and integers of any size reach the API as a client can send
them (``json.dumps`` writes ``NaN`` / ``Infinity``, which Python's and Starlette's JSON readers accept).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mona_core.training.config import LIMITS, STUDY_MAX_ITERATIONS
from services.api.main import create_app
from services.common.db import session_scope
from services.common.models import Dataset, TrainingJob
from services.common.settings import Settings
from tests.services.conftest import API_KEY
from tests.services.test_datasets_api import create_dataset, phantom_bytes
from tests.services.test_jobs_api import insert_dataset, job_body

INF, NAN = float("inf"), float("nan")
STUDY = {"kind": "study", "labelled_patients": None}
CORPUS: list[tuple[str, dict[str, Any], str]] = [
    ("iterations 3e9", {"config": {"iterations": 3_000_000_000}}, "iterations"),
    ("iterations 3e9 as a float", {"config": {"iterations": 3e9}}, "iterations"),
    ("iterations 1e20", {"config": {"iterations": 1e20}}, "iterations"),
    ("iterations 10^20", {"config": {"iterations": 10**20}}, "iterations"),
    ("iterations 2^31-1", {"config": {"iterations": 2**31 - 1}}, "iterations"),
    ("iterations 2^70", {"config": {"iterations": 2**70}}, "iterations"),
    ("labelled_patients 2^40", {"labelled_patients": 2**40}, "labelled_patients"),
    ("labelled_patients 2^70", {"labelled_patients": 2**70}, "labelled_patients"),
    ("labelled_patients above the dataset's", {"labelled_patients": 3}, "labelled_patients"),
    ("lr Infinity", {"config": {"lr": INF}}, "lr"),
    ("lr -Infinity", {"config": {"lr": -INF}}, "lr"),
    ("lr NaN", {"config": {"lr": NAN}}, "lr"),
    ("lr 10^400", {"config": {"lr": 10**400}}, "lr"),
    ("lr above 10", {"config": {"lr": 10.5}}, "lr"),
    ("momentum NaN", {"config": {"momentum": NAN}}, "momentum"),
    ("weight_decay Infinity", {"config": {"weight_decay": INF}}, "weight_decay"),
    ("lr_gamma growing", {"config": {"lr_gamma": 2.0}}, "lr_gamma"),
    ("size 99984", {"config": {"size": 99984}}, "size"),
    ("batch_size 1e7", {"config": {"batch_size": 10_000_000}}, "batch_size"),
    ("seed 2^70", {"config": {"seed": 2**70}}, "seed"),
    ("seed 2^32", {"config": {"seed": 2**32}}, "seed"),
    ("seed -1", {"config": {"seed": -1}}, "seed"),
    ("threads 10^30", {"config": {"threads": 10**30}}, "threads"),
    ("memory_size 10^12", {"kind": "pretrain", "config": {"memory_size": 10**12}}, "memory_size"),
    ("labelled_batch_size 1.5", {"kind": "mean_teacher", "config": {"labelled_batch_size": 1.5}}, "labelled_batch"),
    ("max_loss Infinity", {"config": {"max_loss": INF}}, "max_loss"),
    ("val_every 2^31", {"config": {"val_every": 2**31}}, "val_every"),
    ("study over the total", {**STUDY, "config": {"ratios": [0.1, 0.2, 0.3, 0.4, 0.5], "iterations": 10**6}}, "total"),
    ("study over int32 iterations", {**STUDY, "config": {"iterations": 2**31}}, "iterations"),
    ("study with 100 ratios", {**STUDY, "config": {"ratios": [i / 100 for i in range(1, 101)]}}, "ratios"),
    ("study ratio NaN", {**STUDY, "config": {"ratios": [NAN]}}, "ratios"),
    ("study split_seed Infinity", {**STUDY, "config": {"split_seed": INF}}, "split_seed"),
    ("study split_seed NaN", {**STUDY, "config": {"split_seed": NAN}}, "split_seed"),
    ("study split_seed 2^70", {**STUDY, "config": {"split_seed": 2**70}}, "split_seed"),
    ("study split_seed 2^32", {**STUDY, "config": {"split_seed": 2**32}}, "split_seed"),
]


@pytest.fixture()
def api(service_settings: Settings) -> Iterator[TestClient]:
    """The API, with server errors answered as HTTP 500 (as a client sees them) instead of raised in the test."""
    app = create_app(service_settings)
    with TestClient(app, headers={"X-API-Key": API_KEY}, raise_server_exceptions=False) as client:
        yield client


def post_raw(api: TestClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST ``body`` as JSON text written by ``json.dumps`` (NaN and Infinity as their JavaScript literals)."""
    response: httpx.Response = api.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    return response


def _jobs_of(settings: Settings, dataset_id: str) -> int:
    with session_scope(settings.sqlalchemy_url) as session:
        query = select(func.count()).select_from(TrainingJob).where(TrainingJob.dataset_id == dataset_id)
        return int(session.scalar(query) or 0)


@pytest.mark.parametrize(("case", "overrides", "field"), CORPUS, ids=[case for case, _, _ in CORPUS])
def test_bad_configs_are_422_naming_the_field(
    api: TestClient,
    service_settings: Settings,
    case: str,
    overrides: dict[str, Any],
    field: str,
    record_property: Callable[[str, object], None],
) -> None:
    dataset_id = insert_dataset(service_settings, labelled=2, unlabelled=1)
    body = job_body(dataset_id, **overrides)
    body["config"] = {"size": 32, **body["config"]}
    response = post_raw(api, "/v1/jobs", body)
    record_property("bad-config corpus: 5xx answers", int(response.status_code >= 500))
    assert response.status_code == 422, f"{case}: {response.status_code} {response.text}"
    assert field in json.dumps(response.json()["detail"]), f"{case}: {response.text}"
    assert _jobs_of(service_settings, dataset_id) == 0


def test_the_bounds_themselves_are_accepted(api: TestClient, service_settings: Settings) -> None:
    """lr 10, the largest iterations and seed, every labelled patient, a study at its total: all queued."""
    dataset_id = insert_dataset(service_settings, labelled=2, unlabelled=1)
    accepted = [
        job_body(dataset_id, config={"size": 32, "lr": 10}),
        job_body(dataset_id, config={"size": 32, "lr": 10.0, "iterations": LIMITS["iterations"]}),
        job_body(dataset_id, labelled_patients=2, config={"size": 32, "seed": 2**32 - 1}),
        job_body(dataset_id, kind="mean_teacher", config={"size": 32, "labelled_batch_size": None}),
        job_body(
            dataset_id,
            labelled_patients=None,
            kind="study",
            config={"methods": ["supervised"], "ratios": [0.5], "iterations": 10**6, "split_seed": 2**32 - 1},
        ),
    ]
    assert STUDY_MAX_ITERATIONS >= 10**6
    for body in accepted:
        response = post_raw(api, "/v1/jobs", body)
        assert response.status_code == 202, response.text
    assert _jobs_of(service_settings, dataset_id) == len(accepted)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ab\u0000cd", "classes": ["background", "RV"]}, "name"),
        ({"name": "line\nbreak", "classes": ["background", "RV"]}, "name"),
        ({"name": "bell\u0007", "classes": ["background", "RV"]}, "name"),
        ({"name": "ok", "classes": ["background", "R\u0000V"]}, "classes[1]"),
    ],
)
def test_control_characters_in_a_dataset_are_422(
    api: TestClient, service_settings: Settings, body: dict[str, Any], field: str
) -> None:
    with session_scope(service_settings.sqlalchemy_url) as session:
        before = session.scalar(select(func.count()).select_from(Dataset))
    response = post_raw(api, "/v1/datasets", body)
    assert response.status_code == 422, response.text
    detail = json.dumps(response.json()["detail"])
    assert field in detail and "without control characters" in detail
    with session_scope(service_settings.sqlalchemy_url) as session:  # Postgres refuses NUL even in a query
        assert session.scalar(select(func.count()).select_from(Dataset)) == before


@pytest.mark.parametrize("field", ["case_id", "patient_id"])
def test_control_characters_in_case_fields_are_422(api: TestClient, tmp_path: Path, field: str) -> None:
    """A trailing newline passes a ``^...$`` identifier pattern; the route refuses it first."""
    dataset_id = create_dataset(api)
    image, _ = phantom_bytes(tmp_path)
    files = {"image": ("patient001_0000.nii.gz", image, "application/octet-stream")}
    response = api.post(f"/v1/datasets/{dataset_id}/cases", files=files, data={field: "patient001\n"})
    assert response.status_code == 422, response.text
    assert f"expected {field} without control characters" in response.json()["detail"]
    assert api.get(f"/v1/datasets/{dataset_id}").json()["n_cases"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"kind": "supervised", "dataset_id": "0" * 32, "labelled_ratio": NAN}),
        ("/v1/jobs", {"kind": "supervised", "dataset_id": "0" * 32, "labelled_patients": INF}),
        ("/v1/datasets", {"name": NAN, "classes": ["background", "RV"]}),
    ],
)
def test_non_finite_numbers_in_typed_fields_are_not_a_5xx(api: TestClient, path: str, body: dict[str, Any]) -> None:
    response = post_raw(api, path, body)  # FastAPI echoes the input in its 422: it must still encode as JSON
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
