"""The calling key: ``GET /v1/me`` says which key a client is using, its project and whether it is an admin key."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import PrincipalDep
from services.api.schemas.account import KeyPublic

router = APIRouter(tags=["account"])


@router.get("/me", response_model=KeyPublic)
def who_am_i(principal: PrincipalDep) -> KeyPublic:
    return KeyPublic(key_id=principal.key_id, project=principal.project, admin=principal.admin)
