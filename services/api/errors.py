"""Error responses: every 4xx/5xx is JSON ``{"detail": "..."}`` with a message that says what was expected."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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


async def _as_json(request: Request, exc: Exception) -> JSONResponse:
    del request
    code = next(STATUS_OF[kind] for kind in type(exc).__mro__ if kind in STATUS_OF)
    return JSONResponse(status_code=code, content={"detail": str(exc)})


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
    app.add_exception_handler(RequestValidationError, _invalid_request)
