"""FastAPI dependencies: settings, a database session, the artifact store, the task sender and the API-key check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from services.api.keygate import INVALID, MISSING, STATE_KEY
from services.common.auth import Principal, find_key
from services.common.db import session_scope
from services.common.settings import Settings
from services.common.storage import ArtifactStore

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back when it raises."""
    with session_scope(settings.sqlalchemy_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def get_celery(request: Request) -> Celery:
    app: Celery = request.app.state.celery
    return app


CeleryDep = Annotated[Celery, Depends(get_celery)]


def require_api_key(
    request: Request, session: SessionDep, key: Annotated[str | None, Security(_api_key_header)]
) -> Principal:
    """401 without a key, 403 with a wrong or revoked one; returns who the key is (already verified by the gate in
    ``services.api.keygate`` when the app runs behind it)."""
    verified: Principal | None = getattr(request.state, STATE_KEY, None)
    if verified is not None:
        return verified
    if not key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, MISSING)
    row = find_key(session, key)
    if row is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, INVALID)
    principal = Principal.of(row)
    setattr(request.state, STATE_KEY, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(require_api_key)]
"""The caller's key: its project scopes every lookup and list (``services.api.scope``)."""
