"""API keys: stored as salted HMAC-SHA256 digests; the key itself is shown once, when it is made.

A generated key reads ``mona_<id>_<secret>``: ``id`` (12 hex characters, not secret) is the row's primary key, so a
request costs one lookup and one HMAC. Each row keeps a random 16-byte salt beside ``HMAC-SHA256(salt, key)``.
A free-form key (``MONA_API_KEY=...`` chosen by an operator) has no id in it: it is checked against the active rows
(few: the bootstrap keys). Rows from before salting (``salt`` NULL, a bare SHA-256) stay verifiable as legacy.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.models import DEFAULT_PROJECT, PROJECT_PATTERN, ApiKey, utcnow

logger = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"
"""The name of the key rows made from ``MONA_API_KEY`` (or ``mona serve``'s stored key) at start-up."""
NAME_MAX = 200
_FORMAT = re.compile(r"mona_([0-9a-f]{12})_([A-Za-z0-9_-]{32,})")
_PROJECT = re.compile(PROJECT_PATTERN)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the verified key's id, its project and whether it is an admin key (sees all)."""

    key_id: str
    project: str
    admin: bool = False

    def sees(self, project: str) -> bool:
        """Whether rows of ``project`` are visible to this key."""
        return self.admin or project == self.project

    @classmethod
    def of(cls, row: ApiKey) -> Principal:
        return cls(row.id, row.project, bool(row.admin))


def check_project(project: str) -> str:
    """``project`` if it is a valid project name, else ``ValueError`` saying what is expected."""
    if not _PROJECT.fullmatch(project):
        raise ValueError(
            "expected a project name of 1-64 lower-case letters, digits, '-' or '_' starting with a letter or digit, "
            f"got {project!r}"
        )
    return project


@dataclass(frozen=True)
class NewKey:
    """A key just made: its row and the full key, which is never stored and cannot be shown again."""

    row: ApiKey
    key: str


def hash_key(key: str, salt: str) -> str:
    """``HMAC-SHA256(salt, key)`` as hex; ``salt`` is the row's hex salt."""
    return hmac.new(bytes.fromhex(salt), key.encode(), hashlib.sha256).hexdigest()


def _legacy_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a ``mona_<id>_<secret>`` key, or None for a free-form key."""
    match = _FORMAT.fullmatch(key)
    return match.group(1) if match else None


def generate_key() -> str:
    """A fresh ``mona_<id>_<secret>`` key (not stored)."""
    return f"mona_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def _verifies(row: ApiKey, key: str) -> bool:
    expected = _legacy_hash(key) if row.salt is None else hash_key(key, row.salt)
    return hmac.compare_digest(row.key_hash, expected)


def _matching_row(session: Session, key: str) -> ApiKey | None:
    """The row (active or revoked) whose digest ``key`` verifies against, or None."""
    key_id = key_id_of(key)
    if key_id is not None:
        row = session.get(ApiKey, key_id)
        if row is not None and _verifies(row, key):
            return row
    legacy = session.scalar(select(ApiKey).where(ApiKey.salt.is_(None), ApiKey.key_hash == _legacy_hash(key)))
    if legacy is not None:
        return legacy
    if key_id is not None:
        return None
    free_form = session.scalars(select(ApiKey).where(ApiKey.salt.is_not(None), ApiKey.revoked_at.is_(None)))
    return next((row for row in free_form if _verifies(row, key)), None)


def store_key(session: Session, key: str, name: str, project: str = DEFAULT_PROJECT, admin: bool = False) -> ApiKey:
    """Store ``key`` salted and hashed under ``name`` (its id part as the row id when it has one)."""
    salt = secrets.token_hex(16)
    row = ApiKey(
        id=key_id_of(key) or secrets.token_hex(16),
        name=name,
        salt=salt,
        key_hash=hash_key(key, salt),
        project=check_project(project),
        admin=admin,
    )
    session.add(row)
    session.flush()
    return row


def create_key(session: Session, name: str, project: str = DEFAULT_PROJECT, admin: bool = False) -> NewKey:
    """Make, store and return a new named key of ``project`` (``mona keys create``); an admin key sees all."""
    if not name.strip() or len(name) > NAME_MAX or not name.isprintable():
        raise ValueError(f"expected a printable key name of 1 to {NAME_MAX} characters, got {name!r}")
    key = generate_key()
    return NewKey(store_key(session, key, name, check_project(project), admin), key)


def ensure_key(session: Session, key: str, name: str = BOOTSTRAP) -> ApiKey:
    """Store ``key`` as an admin key unless it is there already (a revoked row stays revoked); used for
    ``MONA_API_KEY`` at start, which is the operator's key and so sees every project."""
    existing = _matching_row(session, key)
    if existing is not None:
        if existing.revoked_at is not None:
            logger.warning("the configured API key %s was revoked; it stays revoked", existing.id)
        return existing
    return store_key(session, key, name, admin=True)


def rotate_bootstrap(session: Session, key: str) -> ApiKey:
    """Make ``key`` the bootstrap key and revoke every other active bootstrap key (the old ``MONA_API_KEY`` dies)."""
    current = ensure_key(session, key)
    stale = select(ApiKey).where(ApiKey.name == BOOTSTRAP, ApiKey.revoked_at.is_(None), ApiKey.id != current.id)
    for row in session.scalars(stale):
        row.revoked_at = utcnow()
        logger.info("revoked the previous bootstrap API key %s", row.id)
    session.flush()
    return current


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active key row matching ``key``, or None."""
    row = _matching_row(session, key)
    return row if row is not None and row.revoked_at is None else None


def list_keys(session: Session) -> list[ApiKey]:
    """Every key row, oldest first (digests and salts are for the caller to leave out)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke the key ``key_id`` (effective for the next request); revoking twice keeps the first time."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise ValueError(f"expected the id of an API key, got {key_id!r} (see `mona keys list`)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
