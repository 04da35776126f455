"""Projects as the API sees them: every lookup and list goes through here, so a key meets its project's rows only.

A row of another project answers exactly as an unknown id does (404, same message): a key cannot learn that
another project's dataset, job, model, report or segmentation exists. An admin key sees every project, and lists
can be narrowed to one with ``?project=``.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

from fastapi import HTTPException, status
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from services.common.auth import Principal, check_project
from services.common.models import Dataset, Model, Report, Segmentation, TrainingJob

_ID: Final = re.compile(r"^[0-9a-f]{32}$")
Owned = Dataset | TrainingJob | Model | Report | Segmentation
Row = TypeVar("Row", Dataset, TrainingJob, Model, Report, Segmentation)
RowsQuery = TypeVar("RowsQuery", bound=Select[Any])
Listed = TypeVar("Listed")


def not_found(what: str, row_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"expected the id of an existing {what}, got {row_id!r}")


def get_or_404(session: Session, principal: Principal, entity: type[Row], row_id: str, what: str) -> Row:
    """The row with id ``row_id`` if the caller's key sees its project; 404 for unknown, malformed or not visible."""
    row = session.get(entity, row_id) if _ID.match(row_id) else None
    if row is None or not principal.sees(row.project) or (isinstance(row, Dataset) and row.deleted_at is not None):
        raise not_found(what, row_id)
    return row


def visible(query: RowsQuery, entity: type[Owned], principal: Principal, project: str | None = None) -> RowsQuery:
    """``query`` narrowed to the rows the key sees: its project, or (admin) all or the ``project`` asked for.

    A non-admin key asking for another project gets 403 (it is told, not silently shown nothing)."""
    if project is not None:
        _check_name(project)
        if not principal.sees(project):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"expected project {principal.project!r} (this key's), got {project!r}"
            )
        return query.where(entity.project == project)
    return query if principal.admin else query.where(entity.project == principal.project)


def paged(session: Session, query: Select[Listed], limit: int, offset: int) -> tuple[list[Listed], int]:
    """The rows of ``query`` from ``offset`` (at most ``limit``) and how many it has in all."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return list(session.scalars(query.limit(limit).offset(offset))), int(total or 0)


def project_for_new(principal: Principal, requested: str | None) -> str:
    """The project a new dataset goes to: the key's own, or (admin keys only) the one asked for."""
    if requested is None or requested == principal.project:
        return principal.project
    _check_name(requested)
    if not principal.admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"expected project {principal.project!r} (this key's; only admin keys choose), got {requested!r}",
        )
    return requested


def _check_name(project: str) -> None:
    try:
        check_project(project)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
