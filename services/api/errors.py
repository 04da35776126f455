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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NiftiError)
    async def nifti_error(request: Request, exc: NiftiError) -> JSONResponse:
        del request
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": str(exc)})

    @app.exception_handler(VolumeTooLarge)
    async def volume_too_large(request: Request, exc: VolumeTooLarge) -> JSONResponse:
        del request
        return JSONResponse(status_code=status.HTTP_413_CONTENT_TOO_LARGE, content={"detail": str(exc)})

    @app.exception_handler(PayloadTooLarge)
    async def too_large(request: Request, exc: PayloadTooLarge) -> JSONResponse:
        del request
        return JSONResponse(status_code=status.HTTP_413_CONTENT_TOO_LARGE, content={"detail": str(exc)})

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
        del request
        return JSONResponse(status_code=status.HTTP_400_BAD_REQUEST, content={"detail": str(exc)})
