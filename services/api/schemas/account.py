"""The calling key as the API shows it."""

from __future__ import annotations

from pydantic import BaseModel


class KeyPublic(BaseModel):
    """The key that made the request (never its secret): its id, its project and whether it sees every project."""

    key_id: str
    project: str
    admin: bool
