"""The end of every DELETE route: commit the deleted rows, then remove the files no remaining row references.

409 when work in progress still uses the target (``services.common.deletion.InUse``); nothing is deleted then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import HTTPException, Response, status
from sqlalchemy.orm import Session

from services.api.schemas.common import ErrorBody
from services.common.deletion import InUse, Removal, apply_removal, unreferenced_objects
from services.common.settings import Settings
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "deleted"},
    409: {"model": ErrorBody, "description": "queued or running work still uses it (nothing was deleted)"},
}


@contextmanager
def conflicts_as_409() -> Iterator[None]:
    try:
        yield
    except InUse as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def finish_deletion(
    session: Session, store: ArtifactStore, settings: Settings, what: str, delete: Callable[[], Removal]
) -> Response:
    """Run ``delete`` (rows, in this session), commit, then unlink what became unreferenced: 204."""
    with conflicts_as_409():
        removal = delete()
    unused = unreferenced_objects(session, removal)
    session.commit()
    removed = apply_removal(store, unused, removal.folders, settings.object_grace_s)
    logger.info(
        "deleted %s: %d objects, %d folders, %d bytes freed",
        what,
        removed.objects,
        removed.folders,
        removed.bytes_freed,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
