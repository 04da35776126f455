"""Error responses: every 4xx/5xx is JSON ``{"detail": "..."}`` with a message that says what was expected."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError as DatabaseInterfaceError
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from mona_core.io import NiftiError, VolumeTooLarge
from services.common.storage import StorageError

logger = logging.getLogger(__name__)


class PayloadTooLarge(Exception):
    """An upload past the configured size cap (413)."""


STATUS_OF: dict[type[Exception], int] = {
    NiftiError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    VolumeTooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    PayloadTooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    StorageError: status.HTTP_400_BAD_REQUEST,
}
"""Library errors and the HTTP status they become; the most specific class wins (VolumeTooLarge is a NiftiError)."""

OUTAGES: dict[type[Exception], str] = {
    DatabaseError: "database",
    DatabaseInterfaceError: "database",
    PoolTimeout: "database",
    BrokerError: "task broker",
    RedisConnectionError: "task broker",
    RedisTimeoutError: "task broker",
}
"""Errors that mean a part of the service is down or hung: a 503 naming the part, never its host or URL."""
RETRY_AFTER_S = 5


async def _as_json(request: Request, exc: Exception) -> JSONResponse:
    del request
    code = next(STATUS_OF[kind] for kind in type(exc).__mro__ if kind in STATUS_OF)
    return JSONResponse(status_code=code, content={"detail": str(exc)})


async def outage_response(request: Request, exc: Exception) -> JSONResponse:
    """503 JSON for a database or broker outage; the driver's message (hosts, ports) goes to the log only."""
    part = next(OUTAGES[kind] for kind in type(exc).__mro__ if kind in OUTAGES)
    logger.warning("%s %s: %s unavailable: %s: %s", request.method, request.url.path, part, type(exc).__name__, exc)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": f"expected a reachable {part}, got an outage (try again shortly)"},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float written as a string: JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a body that fails its schema, safe to encode when the client sent NaN or Infinity."""
    del request
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors(), custom_encoder={float: lambda f: _finite(f)})
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": _finite(errors)})


def install_error_handlers(app: FastAPI) -> None:
    for kind in STATUS_OF:
        app.add_exception_handler(kind, _as_json)
    for kind in OUTAGES:
        app.add_exception_handler(kind, outage_response)
    app.add_exception_handler(RequestValidationError, _invalid_request)
