"""The API-key check at the door: an ASGI middleware that answers 401/403 for ``/v1/*`` before the route runs.

FastAPI reads a form body (``UploadFile``) before it resolves a route's dependencies, so a dependency alone would
let an unauthenticated client make the API read (and spool) a whole upload. This gate looks only at the headers and
never calls ``receive``: a refused request has none of its body read. The verified key (id, project, admin) goes
into the request's state (``principal``), where the route dependency (``deps.require_api_key``, which documents the
header in OpenAPI) takes it instead of verifying the key a second time.
"""

from __future__ import annotations

import logging

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import OUTAGES, outage_response
from services.common.auth import Principal, find_key
from services.common.db import session_scope

logger = logging.getLogger(__name__)

PROTECTED_PREFIX = "/v1/"
HEADER = b"x-api-key"
MISSING = "expected an X-API-Key header, got none"
INVALID = "expected a valid API key, got an unknown or revoked one"
STATE_KEY = "principal"


def _key_of(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == HEADER:
            return bytes(value).decode("latin-1") or None
    return None


def _active_principal(database_url: str, key: str) -> Principal | None:
    with session_scope(database_url) as session:
        row = find_key(session, key)
        return None if row is None else Principal.of(row)


class ApiKeyGate:
    """Refuse ``/v1/*`` requests without an active key from their headers alone (401 none, 403 unknown/revoked)."""

    def __init__(self, app: ASGIApp, database_url: str) -> None:
        self.app = app
        self.database_url = database_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await refusal(scope, _no_body, send)

    async def _refusal(self, scope: Scope) -> JSONResponse | None:
        key = _key_of(scope)
        if key is None:
            return JSONResponse({"detail": MISSING}, status_code=status.HTTP_401_UNAUTHORIZED)
        try:
            principal = await run_in_threadpool(_active_principal, self.database_url, key)
        except tuple(OUTAGES) as exc:
            return await outage_response(Request(scope), exc)
        if principal is None:
            return JSONResponse({"detail": INVALID}, status_code=status.HTTP_403_FORBIDDEN)
        scope.setdefault("state", {})[STATE_KEY] = principal
        return None


async def _no_body() -> Message:
    """A ``receive`` for the refusal: the request's body is never read (the server discards or closes it)."""
    return {"type": "http.disconnect"}
