"""API keys: only a SHA-256 of each key is stored; the key itself is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.models import ApiKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return "mona_" + secrets.token_urlsafe(32)


def ensure_key(session: Session, key: str, name: str = "bootstrap") -> ApiKey:
    """Store ``key`` (hashed) unless it is there already; used for ``MONA_API_KEY`` at start-up."""
    digest = hash_key(key)
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if existing is not None:
        return existing
    row = ApiKey(name=name, key_hash=digest)
    session.add(row)
    session.flush()
    return row


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active key row matching ``key``, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    return row if row is not None and row.revoked_at is None else None
