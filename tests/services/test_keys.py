"""API keys: ``mona keys create|list|revoke``, salted storage, legacy rows, rotation of the bootstrap key, the key
kept by ``mona serve``, and the check at the door (a refused upload has none of its body read)."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.main import create_app
from services.common.auth import find_key, key_id_of, store_key
from services.common.db import session_scope
from services.common.models import ApiKey
from services.common.settings import Settings
from services.embedded import embedded_settings, stored_key
from tests.services.conftest import API_KEY, REPO, settings_env


def _mona_keys(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mona_core", "keys", *args]
    env = settings_env(settings)
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def _create(settings: Settings, name: str) -> str:
    done = _mona_keys(settings, "create", "--name", name)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key_id_of(key) is not None, f"expected a mona_<id>_<secret> key, got {key!r}"
    return key


def _status(client: TestClient, key: str) -> int:
    code: int = client.get("/v1/datasets", headers={"X-API-Key": key}).status_code
    return code


def test_cli_creates_lists_and_revokes_a_key_with_effect_at_once(service_settings: Settings) -> None:
    key = _create(service_settings, "ci-bot")
    key_id = key_id_of(key)
    assert key_id is not None
    with TestClient(create_app(service_settings)) as client:
        assert _status(client, key) == 200
        listed = _mona_keys(service_settings, "list")
        assert listed.returncode == 0, listed.stderr
        (line,) = [row for row in listed.stdout.splitlines() if row.startswith(key_id)]
        assert "ci-bot" in line and line.rstrip().endswith("-"), line
        assert key.rsplit("_", 1)[1] not in listed.stdout, "the list must never show a secret"
        revoked = _mona_keys(service_settings, "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert _status(client, key) == 403, "a revoked key must be refused on the next request"
        assert _status(client, API_KEY) == 200
    (line,) = [row for row in _mona_keys(service_settings, "list").stdout.splitlines() if row.startswith(key_id)]
    assert not line.rstrip().endswith("-"), f"expected a revocation time, got {line!r}"


def test_cli_refuses_an_unknown_id_and_an_empty_name(service_settings: Settings) -> None:
    unknown = _mona_keys(service_settings, "revoke", "0123456789ab")
    assert unknown.returncode == 2 and "expected the id of an API key" in unknown.stderr
    empty = _mona_keys(service_settings, "create", "--name", " ")
    assert empty.returncode == 2 and "expected a printable key name" in empty.stderr


def test_stored_hashes_are_salted_and_hold_no_secret(service_settings: Settings) -> None:
    key = _create(service_settings, "salted")
    secret = key.split("_", 2)[2]  # mona_<id>_<secret>; the secret itself may hold "_"
    with session_scope(service_settings.sqlalchemy_url) as session:
        dump = repr(session.execute(text("SELECT * FROM api_keys")).all())
    assert secret not in dump and key not in dump
    assert hashlib.sha256(key.encode()).hexdigest() not in dump, "expected a salted digest, got a bare SHA-256"
    shared = "free-form-" + secret
    with session_scope(service_settings.sqlalchemy_url) as session:
        first, second = store_key(session, shared, "twin-a"), store_key(session, shared, "twin-b")
        assert first.salt != second.salt and first.key_hash != second.key_hash
        assert find_key(session, shared) is not None


def test_legacy_sha256_rows_stay_valid_until_revoked(service_settings: Settings) -> None:
    legacy = "mona_" + "legacy-" + service_settings.data_dir.parent.name
    digest = hashlib.sha256(legacy.encode()).hexdigest()
    with session_scope(service_settings.sqlalchemy_url) as session:
        session.add(ApiKey(id=digest[:32], name="before-salting", key_hash=digest))
    with TestClient(create_app(service_settings)) as client:
        assert _status(client, legacy) == 200
        revoked = _mona_keys(service_settings, "revoke", digest[:32])
        assert revoked.returncode == 0, revoked.stderr
        assert _status(client, legacy) == 403


def test_a_changed_mona_api_key_revokes_the_previous_bootstrap_key(isolated_settings: Settings) -> None:
    named = _create(isolated_settings, "kept")
    with TestClient(create_app(isolated_settings)) as client:
        assert _status(client, API_KEY) == 200
    rotated = isolated_settings.model_copy(update={"api_key": "rotated-" + API_KEY})
    with TestClient(create_app(rotated)) as client:
        assert _status(client, "rotated-" + API_KEY) == 200
        assert _status(client, API_KEY) == 403, "the old MONA_API_KEY must die on rotation"
        assert _status(client, named) == 200, "rotation touches bootstrap keys only"


def test_serve_without_a_key_reuses_one_kept_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONA_API_KEY", raising=False)
    first, kept = embedded_settings(tmp_path / "data", None)
    second, _ = embedded_settings(tmp_path / "data", None)
    assert kept and first.api_key and first.api_key == second.api_key == stored_key(tmp_path / "data")
    assert stat.S_IMODE((tmp_path / "data" / "api-key").stat().st_mode) == 0o600
    given, kept = embedded_settings(tmp_path / "data", "given-key")
    assert given.api_key == "given-key" and not kept


class BodyMeter:
    """An ASGI wrapper that counts the request-body bytes the app under it pulls through ``receive``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.read = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def metered() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, metered, send)


def _multipart(size: int) -> tuple[bytes, str]:
    boundary = "mona-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.nii.gz"\r\n\r\n'
    body = head.encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(service_settings: Settings) -> None:
    body, content_type = _multipart(50 * 1024 * 1024)
    meter = BodyMeter(create_app(service_settings))
    staging = service_settings.artifact_root / "tmp"
    routes = ["/v1/models/0123/segment", "/v1/datasets/0123/cases", "/v1/datasets/0123/archive"]
    with TestClient(meter) as client:
        for route in routes:
            for headers, expected in (({}, 401), ({"X-API-Key": "wrong"}, 403)):
                started = time.monotonic()
                answer = client.post(route, content=body, headers={"Content-Type": content_type, **headers})
                assert (answer.status_code, meter.read) == (expected, 0), route
                assert time.monotonic() - started < 5, f"{route}: expected a quick refusal"
                assert not staging.exists() or not any(staging.iterdir()), f"{route}: expected nothing staged"


def test_cli_makes_project_and_admin_keys(service_settings: Settings) -> None:
    done = _mona_keys(service_settings, "create", "--name", "ward-bot", "--project", "ward-7")
    assert done.returncode == 0, done.stderr
    member = done.stdout.strip().splitlines()[-1]
    admin_done = _mona_keys(service_settings, "create", "--name", "ops", "--admin")
    assert admin_done.returncode == 0, admin_done.stderr
    admin = admin_done.stdout.strip().splitlines()[-1]
    with TestClient(create_app(service_settings)) as client:
        assert client.get("/v1/me", headers={"X-API-Key": member}).json()["project"] == "ward-7"
        assert client.get("/v1/me", headers={"X-API-Key": admin}).json()["admin"] is True
    listed = _mona_keys(service_settings, "list").stdout
    (line,) = [row for row in listed.splitlines() if row.startswith(str(key_id_of(member)))]
    assert "ward-7" in line.split() and "no" in line.split(), line
    bad = _mona_keys(service_settings, "create", "--name", "x", "--project", "Ward 7")
    assert bad.returncode != 0 and "project name" in bad.stderr, bad.stderr
