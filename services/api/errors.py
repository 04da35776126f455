"""Error responses: every 4xx/5xx is JSON ``{"detail": "..."}`` with a message that says what was expected."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
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


def install_error_handlers(app: FastAPI) -> None:
    for kind in STATUS_OF:
        app.add_exception_handler(kind, _as_json)
