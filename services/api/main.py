"""The FastAPI application: ``create_app`` builds it from ``Settings``; ``run_api`` migrates and serves it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import uvicorn
from fastapi import APIRouter, Depends, FastAPI

from services.api.deps import require_api_key
from services.api.docs import install_docs
from services.api.errors import install_error_handlers
from services.api.keygate import ApiKeyGate
from services.api.openapi import declare_errors
from services.api.routes import account, batches, datasets, health, jobs, models, reports
from services.api.staging import sweep_once, sweep_periodically
from services.api.ui.routes import install_console
from services.common.auth import rotate_bootstrap
from services.common.db import session_scope
from services.common.migrate import upgrade_head
from services.common.settings import Settings, get_settings
from services.common.storage import ArtifactStore
from services.common.tasks import make_celery

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API with its state (settings, artifact store, task sender). Routes under /v1 need ``X-API-Key``, checked
    before a request's body is read (``ApiKeyGate``); at start ``MONA_API_KEY`` becomes the only bootstrap key."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.api_key:
            with session_scope(settings.sqlalchemy_url) as session:
                rotate_bootstrap(session, settings.api_key)
        sweep_once(app.state.store, settings.staging_max_age_s)
        sweeper = asyncio.create_task(sweep_periodically(app.state.store, settings.staging_max_age_s))
        yield
        sweeper.cancel()
        with suppress(asyncio.CancelledError):
            await sweeper

    app = FastAPI(title="MONA as a service", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.store = ArtifactStore(settings.artifact_root)
    app.state.celery = make_celery(settings)
    install_error_handlers(app)
    app.add_middleware(ApiKeyGate, database_url=settings.sqlalchemy_url)
    install_docs(app)
    install_console(app)
    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    for module in (account, datasets, jobs, batches, models, reports):
        v1.include_router(module.router)
    app.include_router(v1)
    declare_errors(app)
    return app


def run_api(host: str, port: int, workers: int = 1) -> int:
    """Prestart (``alembic upgrade head``), then serve with uvicorn."""
    upgrade_head()
    uvicorn.run("services.api.main:create_app", factory=True, host=host, port=port, workers=workers)
    return 0
