"""Datasets and case uploads over HTTP: happy paths, and bad uploads that must leave no row and no file behind.

Tables may be shared with other tests (Postgres in CI): every assertion looks at this test's own dataset only.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from mona_core.data.phantoms import make_phantom, write_phantom_case
from mona_core.io import Geometry, Volume, read_image, write_volume
from services.api.main import create_app
from services.common import ingest
from services.common.db import session_factory, session_scope
from services.common.models import Case
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from tests.services.conftest import API_KEY, REPO

CLASSES = ["background", "RV", "Myo", "LV"]
SHAPE = (2, 16, 16)

Snapshot = tuple[int, list[str], list[str]]


def create_dataset(api: TestClient, name: str = "phantoms", classes: list[str] | None = None) -> str:
    response = api.post("/v1/datasets", json={"name": name, "classes": classes or CLASSES})
    assert response.status_code == 201, response.text
    dataset_id: str = response.json()["id"]
    return dataset_id


def snapshot(settings: Settings, dataset_id: str) -> Snapshot:
    """This dataset's case rows, and every file under the store's ``objects/`` and ``tmp/``.

    Empty two-hex-digit shard folders under ``objects/`` may stay (removing them could race with another upload).
    """
    with session_scope(settings.sqlalchemy_url) as session:
        rows = session.scalar(select(func.count()).select_from(Case).where(Case.dataset_id == dataset_id))
    root = settings.artifact_root.resolve()
    objects = sorted(str(p.relative_to(root)) for p in (root / "objects").rglob("*") if not p.is_dir())
    return int(rows or 0), objects, sorted(str(p.relative_to(root)) for p in (root / "tmp").rglob("*"))


def phantom_bytes(tmp_path: Path, seed: int = 1, suffix: str = ".nii.gz") -> tuple[bytes, bytes]:
    image, label = tmp_path / f"image{seed}{suffix}", tmp_path / f"label{seed}{suffix}"
    write_phantom_case(image, label, seed, shape=SHAPE)
    return image.read_bytes(), label.read_bytes()


def volume_bytes(tmp_path: Path, array: np.ndarray, geometry: Geometry, name: str = "v.nii.gz") -> bytes:
    return write_volume(Volume(array=array, geometry=geometry), tmp_path / name).read_bytes()


def upload(
    api: TestClient,
    dataset_id: str,
    image: bytes,
    label: bytes | None = None,
    name: str = "case1_0000.nii.gz",
    **fields: str,
) -> httpx.Response:
    files = {"image": (name, image, "application/octet-stream")}
    if label is not None:
        files["label"] = ("case1.nii.gz", label, "application/octet-stream")
    return api.post(f"/v1/datasets/{dataset_id}/cases", files=files, data=fields)


# --- datasets --------------------------------------------------------------------------------------------------


def test_create_list_and_get_dataset(api: TestClient) -> None:
    first = create_dataset(api, "first")
    second = api.post("/v1/datasets", json={"name": "second", "preset": "ct", "classes": ["background", "liver"]})
    assert second.status_code == 201
    body = second.json()
    assert body["preset"] == "ct" and body["classes"] == ["background", "liver"]
    assert (body["n_cases"], body["n_patients"], body["n_labelled_cases"], body["splits"]) == (0, 0, 0, {})
    listed = [row["id"] for row in api.get("/v1/datasets").json()["items"]]
    assert listed.index(body["id"]) < listed.index(first)  # newest first
    got = api.get(f"/v1/datasets/{first}")
    assert got.status_code == 200 and got.json()["name"] == "first" and got.json()["preset"] == "mri"


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "", "classes": CLASSES},
        {"name": "x", "classes": ["background"]},
        {"name": "x", "classes": ["RV", "background"]},
        {"name": "x", "classes": ["background", "RV", "RV"]},
        {"name": "x", "classes": CLASSES, "preset": "pet"},
        {"name": "x"},
    ],
)
def test_create_dataset_rejects_bad_bodies(api: TestClient, payload: dict[str, Any]) -> None:
    assert api.post("/v1/datasets", json=payload).status_code == 422


@pytest.mark.parametrize("dataset_id", ["0" * 32, "not-a-hex-id", "ABCDEF" * 5 + "AB"])
def test_unknown_dataset_is_404(api: TestClient, dataset_id: str, tmp_path: Path) -> None:
    response = api.get(f"/v1/datasets/{dataset_id}")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("expected the id of an existing dataset, got")
    image, _ = phantom_bytes(tmp_path)
    assert upload(api, "0" * 32, image).status_code == 404


def test_api_key_is_required(api: TestClient, service_settings: Settings) -> None:
    dataset_id = create_dataset(api)
    with TestClient(create_app(service_settings)) as anonymous:
        assert anonymous.get("/v1/datasets").status_code == 401
        wrong = anonymous.get(f"/v1/datasets/{dataset_id}", headers={"X-API-Key": "wrong"})
        assert wrong.status_code == 403
        files = {"image": ("a.nii.gz", b"x", "application/octet-stream")}
        assert anonymous.post(f"/v1/datasets/{dataset_id}/cases", files=files).status_code == 401
    assert snapshot(service_settings, dataset_id) == (0, [], [])


# --- case uploads ----------------------------------------------------------------------------------------------


def test_upload_labelled_and_unlabelled_cases(api: TestClient, service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    image, label = phantom_bytes(tmp_path, seed=3)
    response = upload(api, dataset_id, image, label, name="patient001_frame01_0000.nii.gz")
    assert response.status_code == 201, response.text
    case = response.json()
    (tmp_path / "sent.nii.gz").write_bytes(image)
    assert case["geometry"] == read_image(tmp_path / "sent.nii.gz").geometry.to_dict()
    expected_geometry = make_phantom(3, shape=SHAPE)[0].geometry  # NIfTI keeps origin / direction as float32
    assert Geometry.from_dict(case["geometry"]).matches(expected_geometry, tolerance=1e-5)
    assert case["geometry"]["size"] == list(expected_geometry.size)
    expected = ["patient001_frame01", "patient001", "train", "labelled"]
    assert [case[k] for k in ("case_id", "patient_id", "split", "role")] == expected
    digests = [hashlib.sha256(data).hexdigest() for data in (image, label)]
    assert [case["image_sha256"], case["label_sha256"]] == digests and case["dataset_id"] == dataset_id

    other, _ = phantom_bytes(tmp_path, seed=4, suffix=".nii")
    response = upload(api, dataset_id, other, name="x.nii", case_id="p2_frame02", split="val")
    assert response.status_code == 201, response.text
    assert [response.json()[k] for k in ("patient_id", "role", "label_sha256")] == ["p2", "unlabelled", None]
    summary = api.get(f"/v1/datasets/{dataset_id}").json()
    assert (summary["n_cases"], summary["n_patients"], summary["n_labelled_cases"]) == (2, 2, 1)
    assert summary["splits"] == {"train": 1, "val": 1}
    rows, objects, staging = snapshot(service_settings, dataset_id)
    assert rows == 2 and len([o for o in objects if o.endswith((".nii", ".nii.gz"))]) == 3 and staging == []
    listed = api.get(f"/v1/datasets/{dataset_id}/cases", params={"split": "val"}).json()["items"]
    assert [row["case_id"] for row in listed] == ["p2_frame02"]


def test_case_id_is_sanitised_from_the_file_name(api: TestClient, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    image, _ = phantom_bytes(tmp_path)
    response = upload(api, dataset_id, image, name="my scan (1)_0000.NII.GZ")
    assert response.status_code == 201, response.text
    assert response.json()["case_id"] == "my_scan_1"


def test_duplicate_case_id_is_409(api: TestClient, service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    image, label = phantom_bytes(tmp_path)
    assert upload(api, dataset_id, image, label).status_code == 201
    before = snapshot(service_settings, dataset_id)
    other, _ = phantom_bytes(tmp_path, seed=9)
    response = upload(api, dataset_id, other)
    assert response.status_code == 409
    assert "case1" in response.json()["detail"]
    assert snapshot(service_settings, dataset_id) == before


def test_a_failed_commit_removes_only_the_objects_no_row_uses(
    api: TestClient, service_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent insert of the same case id (simulated: the pre-check skipped) fails at commit; the new image
    object goes away, the label object shared with the committed case stays."""
    dataset_id = create_dataset(api)
    image, label = phantom_bytes(tmp_path)
    assert upload(api, dataset_id, image, label).status_code == 201
    before = snapshot(service_settings, dataset_id)
    store = ArtifactStore(service_settings.artifact_root)
    staged_image, staged_label = store.staging_file(".nii"), store.staging_file(".nii.gz")
    staged_image.write_bytes(_plain(tmp_path))  # same grid, other bytes: a new object
    staged_label.write_bytes(label)  # same bytes: the committed case's object
    staged = ingest.StagedCase("case1", "case1", "train", staged_image, staged_label)
    checked = ingest.check_case(staged, len(CLASSES), service_settings.max_voxels)
    monkeypatch.setattr(ingest, "_check_new", lambda *args: None)
    session = session_factory(service_settings.sqlalchemy_url)()
    try:
        with pytest.raises(ingest.DuplicateCaseError, match="conflicting write"):
            ingest.store_cases(session, store, dataset_id, [checked])
    finally:
        session.close()
    assert snapshot(service_settings, dataset_id) == before


def _four_d(tmp_path: Path) -> bytes:
    frame = sitk.GetImageFromArray(np.ones(SHAPE, dtype=np.float32))
    path = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(path))
    return path.read_bytes()


def _with_dims(nifti: bytes, dims: tuple[int, ...]) -> bytes:
    """An uncompressed NIfTI-1 file's bytes with other dimensions written in its header."""
    return nifti[:40] + struct.pack("<8h", *dims, *[1] * (8 - len(dims))) + nifti[56:]


def _plain(tmp_path: Path) -> bytes:
    image, _ = phantom_bytes(tmp_path, seed=1, suffix=".nii")
    return image


def _nan_image(tmp_path: Path) -> bytes:
    array = np.where(np.arange(512).reshape(SHAPE) == 7, np.nan, 1.0).astype(np.float32)
    return volume_bytes(tmp_path, array, make_phantom(1, shape=SHAPE)[0].geometry)


def _label(tmp_path: Path, array: np.ndarray) -> bytes:
    return volume_bytes(tmp_path, array, make_phantom(1, shape=SHAPE)[1].geometry, "label.nii.gz")


def _bomb(tmp_path: Path) -> bytes:
    return gzip.compress(_plain(tmp_path) + bytes(8 << 20), 1)


BadCase = Callable[[Path], tuple[str, bytes, bytes | None]]
BAD_CASES: dict[str, tuple[str, BadCase]] = {  # kind -> (a word of the message, builder of (name, image, label))
    "text name": (".nii", lambda t: ("notes.txt", b"hello", None)),
    "text named nii.gz": ("broken", lambda t: ("a.nii.gz", b"this is not a NIfTI file at all", None)),
    "empty": ("empty", lambda t: ("a.nii.gz", b"", None)),
    "truncated gzip": ("broken", lambda t: ("a.nii.gz", phantom_bytes(t)[0][:900], None)),
    "truncated nii": ("truncated", lambda t: ("a.nii", _plain(t)[:-100], None)),
    "4D": ("4D", lambda t: ("a.nii.gz", _four_d(t), None)),
    "NaN image": ("NaN", lambda t: ("a.nii.gz", _nan_image(t), None)),
    "label grid mismatch": ("image grid", lambda t: ("a.nii.gz", phantom_bytes(t, 1)[0], phantom_bytes(t, 2)[1])),
    "labels out of range": (
        "0..3",
        lambda t: ("a.nii.gz", phantom_bytes(t, 1)[0], _label(t, np.full(SHAPE, 7, np.uint8))),
    ),
    "fractional labels": (
        "fractional",
        lambda t: ("a.nii.gz", phantom_bytes(t, 1)[0], _label(t, np.full(SHAPE, 0.5, np.float32))),
    ),
    "gzip bomb": ("gzip bomb", lambda t: ("a.nii.gz", _bomb(t), None)),
    "label bomb": ("gzip bomb", lambda t: ("a.nii.gz", phantom_bytes(t, 1)[0], _bomb(t))),
    "header above max_voxels": (
        "voxels",
        lambda t: ("a.nii.gz", gzip.compress(_with_dims(_plain(t), (3, 4096, 4096, 64))), None),
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_uploads_are_refused_and_leave_nothing(
    api: TestClient, service_settings: Settings, tmp_path: Path, kind: str
) -> None:
    dataset_id = create_dataset(api)
    word, build = BAD_CASES[kind]
    name, image, label = build(tmp_path)
    before = snapshot(service_settings, dataset_id)
    response = upload(api, dataset_id, image, label, name=name)
    # a volume past MONA_MAX_VOXELS is a size limit (413), like an oversize body; every other case is invalid (422)
    assert response.status_code == (413 if kind == "header above max_voxels" else 422), response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("expected") and word in detail, detail
    assert snapshot(service_settings, dataset_id) == before


@pytest.mark.parametrize(
    ("fields", "word"),
    [({"split": "holdout"}, "split"), ({"case_id": "../etc"}, "case id"), ({"patient_id": "x" * 201}, "patient id")],
)
def test_bad_form_fields_are_422(api: TestClient, tmp_path: Path, fields: dict[str, str], word: str) -> None:
    dataset_id = create_dataset(api)
    image, _ = phantom_bytes(tmp_path)
    response = upload(api, dataset_id, image, **fields)
    assert response.status_code == 422 and word in response.json()["detail"]


def test_missing_image_and_unknown_fields(api: TestClient) -> None:
    dataset_id = create_dataset(api)
    only_label = {"label": ("a.nii.gz", b"x", "application/octet-stream")}
    response = api.post(f"/v1/datasets/{dataset_id}/cases", files=only_label)
    assert response.status_code == 422 and "'image'" in response.json()["detail"]
    extra = api.post(f"/v1/datasets/{dataset_id}/cases", files={"other": ("a.nii.gz", b"x")})
    assert extra.status_code == 422
    not_multipart = api.post(f"/v1/datasets/{dataset_id}/cases", content=b"{}", headers={"Content-Type": "text/x"})
    assert not_multipart.status_code == 415
    long_field = api.post(
        f"/v1/datasets/{dataset_id}/cases", files={"image": ("a.nii", b"x")}, data={"split": "x" * 2000}
    )
    assert long_field.status_code == 413


# --- size caps -------------------------------------------------------------------------------------------------


def _multipart(image: bytes) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://test/", files={"image": ("a_0000.nii.gz", image)}, data={"split": "val"})
    return request.read(), request.headers["content-type"]


async def _post_in_chunks(app: FastAPI, path: str, content_type: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST straight to the ASGI app, body in several messages and without Content-Length (a chunked upload)."""
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type.encode()), (b"x-api-key", API_KEY.encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("testclient", 1),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), body


def test_oversize_uploads_are_413_and_leave_nothing(
    api: TestClient, service_settings: Settings, tmp_path: Path
) -> None:
    dataset_id = create_dataset(api)
    image, _ = phantom_bytes(tmp_path)
    small = service_settings.model_copy(update={"max_upload_bytes": 1500})
    app = create_app(small)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        declared = upload(client, dataset_id, image)
        assert declared.status_code == 413
        assert declared.json()["detail"].startswith("expected an upload of at most 1500 bytes, got")
        body, content_type = _multipart(image)
        chunks = [body[i : i + 256] for i in range(0, len(body), 256)]
        status, raw = asyncio.run(_post_in_chunks(app, f"/v1/datasets/{dataset_id}/cases", content_type, chunks))
        assert status == 413 and b"expected an upload of at most 1500 bytes, got more" in raw
    assert snapshot(service_settings, dataset_id) == (0, [], [])


def test_chunked_upload_under_the_cap_is_stored(api: TestClient, service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    image, _ = phantom_bytes(tmp_path)
    body, content_type = _multipart(image)
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    status, raw = asyncio.run(_post_in_chunks(api.app, f"/v1/datasets/{dataset_id}/cases", content_type, chunks))
    assert status == 201, raw
    assert snapshot(service_settings, dataset_id)[0] == 1


def test_truncated_multipart_body_is_400(api: TestClient, service_settings: Settings, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    image, _ = phantom_bytes(tmp_path)
    body, content_type = _multipart(image)
    status, raw = asyncio.run(_post_in_chunks(api.app, f"/v1/datasets/{dataset_id}/cases", content_type, [body[:-60]]))
    assert status == 400 and b"truncated" in raw
    assert snapshot(service_settings, dataset_id) == (0, [], [])


def test_upload_modules_never_import_torch() -> None:
    code = (
        "import sys, services.api.main, services.api.routes.datasets, services.common.ingest, "
        "services.common.archives; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
