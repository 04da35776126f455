"""Engine and sessions. SQLite (embedded default) and Postgres go through the same code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from services.common.deadlines import install_deadlines
from services.common.settings import Settings, get_settings


@dataclass(frozen=True)
class DbTimeouts:
    """Bounds on waiting for Postgres, so an outage becomes an error in seconds instead of a hung request.

    ``connect_s``: libpq ``connect_timeout`` (a stopped or hung server); ``statement_s``: the server-side
    ``statement_timeout`` (0 = none); ``pool_s``: how long a caller waits for a pooled connection.
    """

    connect_s: int = 5
    statement_s: float = 60.0
    pool_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DbTimeouts:
        return cls(settings.db_connect_timeout_s, settings.db_statement_timeout_s, settings.db_pool_timeout_s)


def make_engine(url: str, timeouts: DbTimeouts | None = None, **options: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys so the API and a worker can share it.

    Postgres gets a pre-ping under a deadline (a dead or hung pooled connection is replaced, so the process
    recovers when the server returns), client-side statement deadlines (``services.common.deadlines``) and the
    ``timeouts``; connection parameters already in the URL's query win over them.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    timeouts = timeouts or DbTimeouts()
    if options.get("poolclass") is None:
        options = {"pool_size": 10, "max_overflow": 20, "pool_timeout": timeouts.pool_s, **options}
    engine = create_engine(url, connect_args=_postgres_args(url, timeouts), **options)
    install_deadlines(engine, timeouts.statement_s, ping_s=max(1.0, timeouts.connect_s / 2))
    return engine


def _postgres_args(url: str, timeouts: DbTimeouts) -> dict[str, Any]:
    """psycopg connection arguments for ``timeouts``, leaving out what the URL sets itself."""
    query = make_url(url).query
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = timeouts.connect_s
    if "options" not in query and timeouts.statement_s > 0:
        args["options"] = f"-c statement_timeout={round(timeouts.statement_s * 1000)}"
    return args


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    del record
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    """The process's sessions for ``url``, on one engine with the environment's timeouts (``MONA_DB_*``)."""
    engine = make_engine(url, DbTimeouts.from_settings(get_settings()))
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
