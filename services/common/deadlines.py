"""Client-side deadlines for Postgres calls, so that a hung server (SIGSTOP, a frozen VM) cannot hang a caller.

A server-side ``statement_timeout`` needs a server that runs; a hung one still completes TCP handshakes and
acknowledges packets (the kernel does), so neither ``connect_timeout`` nor TCP keepalives notice that a pooled
connection's backend stopped answering. ``SocketWatchdog`` is one daemon thread per process: a call registers its
connection's socket with a deadline, and past it the watchdog shuts the socket down. The blocked driver then sees
the connection closed, SQLAlchemy invalidates it (a disconnect), and the caller gets ``OperationalError`` (503 in
the API). ``install_deadlines`` registers every statement and every COMMIT and ROLLBACK (including the pool's
rollback when a connection is returned) under ``statement_s`` plus a grace period, and replaces the pool's
pre-ping with one under a short deadline: a dead or hung pooled connection is swapped for a fresh one, whose
connect is bounded by ``connect_timeout``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

logger = logging.getLogger(__name__)

GRACE_S: Final = 2.0
"""Past the server's own ``statement_timeout``: the server should answer first; the watchdog is the backstop."""
TICK_S: Final = 0.1
FRESH: Final = "mona_fresh"


class SocketWatchdog:
    """Shuts down the socket of any registered call that outlives its deadline (one thread, started lazily)."""

    def __init__(self, tick: float = TICK_S) -> None:
        self.tick = tick
        self._due: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """In a forked child: the parent's watches, lock and thread do not carry over (a new thread starts lazily)."""
        self._due, self._lock, self._thread = {}, threading.Lock(), None

    def watch(self, key: int, fileno: int, seconds: float) -> None:
        """Shut ``fileno`` down in ``seconds`` unless ``release(key)`` comes first (a new watch replaces one)."""
        with self._lock:
            self._due[key] = (time.monotonic() + seconds, fileno)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mona-db-deadlines", daemon=True)
                self._thread.start()

    def release(self, key: int) -> None:
        with self._lock:
            self._due.pop(key, None)

    @contextmanager
    def deadline(self, key: int, fileno: int, seconds: float) -> Iterator[None]:
        self.watch(key, fileno, seconds)
        try:
            yield
        finally:
            self.release(key)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        """Shut down every overdue socket; under the lock, so its owner cannot release and close it meanwhile."""
        with self._lock:
            for key, (due, fileno) in list(self._due.items()):
                if due <= now:
                    del self._due[key]
                    _shut_down(fileno)


def _shut_down(fileno: int) -> None:
    try:
        duplicate = socket.socket(fileno=os.dup(fileno))
    except OSError as exc:
        logger.warning("database call past its deadline, but its socket is gone: %s", exc)
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
        logger.warning("database call past its deadline: connection shut down")
    except OSError as exc:
        logger.warning("database call past its deadline, shutting its socket down failed: %s", exc)
    finally:
        duplicate.close()


WATCHDOG = SocketWatchdog()
os.register_at_fork(after_in_child=WATCHDOG.forget)


def _fileno(dbapi_connection: Any) -> int | None:
    """The socket of a psycopg connection, or None (another driver, or a closed connection)."""
    try:
        return int(dbapi_connection.pgconn.socket)
    except (AttributeError, TypeError, ValueError, OSError, psycopg.Error):
        return None


def install_deadlines(engine: Engine, statement_s: float, ping_s: float, watchdog: SocketWatchdog = WATCHDOG) -> None:
    """Bound every statement on ``engine`` (``statement_s + GRACE_S``; 0 = unbounded) and ping each reused
    connection at checkout under ``ping_s`` (use it instead of ``pool_pre_ping``)."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        del dbapi_connection
        record.info[FRESH] = True

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        del proxy
        if record.info.pop(FRESH, False):
            return
        _bounded_ping(watchdog, dbapi_connection, ping_s)

    def on_checkin(dbapi_connection: Any, record: Any) -> None:
        del record
        if dbapi_connection is not None:
            watchdog.release(id(dbapi_connection))

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_checkin)
    if statement_s > 0:
        _bound_statements(engine, statement_s + GRACE_S, watchdog)
        _bound_transaction_ends(engine, statement_s + GRACE_S, watchdog)


def _bound_transaction_ends(engine: Engine, seconds: float, watchdog: SocketWatchdog) -> None:
    """COMMIT and ROLLBACK under the deadline too: they are no statements to SQLAlchemy's cursor events, and a
    hung server would otherwise hold a commit (or the pool's reset-on-return rollback) for ever. The engine's own
    dialect object is wrapped, so other engines are untouched."""
    dialect = engine.dialect

    def bounded(original: Any) -> Any:
        def end(dbapi_connection: Any) -> None:
            fileno = _fileno(dbapi_connection)
            if fileno is None:
                original(dbapi_connection)
                return
            with watchdog.deadline(id(dbapi_connection), fileno, seconds):
                original(dbapi_connection)

        return end

    dialect.do_commit = bounded(dialect.do_commit)  # type: ignore[method-assign]
    dialect.do_rollback = bounded(dialect.do_rollback)  # type: ignore[method-assign]


def _bounded_ping(watchdog: SocketWatchdog, dbapi_connection: Any, seconds: float) -> None:
    """``SELECT 1`` under a deadline; a failure tells the pool to replace the connection (``DisconnectionError``)."""
    fileno = _fileno(dbapi_connection)
    if fileno is None:
        raise DisconnectionError("expected an open database connection, got a closed one")
    autocommit = dbapi_connection.autocommit
    try:
        with watchdog.deadline(id(dbapi_connection), fileno, seconds):
            dbapi_connection.autocommit = True
            dbapi_connection.execute("SELECT 1")
            dbapi_connection.autocommit = autocommit
    except (psycopg.Error, OSError) as exc:
        raise DisconnectionError(f"expected a live pooled connection, got {type(exc).__name__}") from exc


class _Current(threading.local):
    """The watch key of the statement this thread is running (one at a time per thread), so that the end of the
    statement releases it even when its connection was invalidated meanwhile."""

    key: int | None = None


def _bound_statements(engine: Engine, seconds: float, watchdog: SocketWatchdog) -> None:
    current = _Current()

    def before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool) -> None:
        del cursor, statement, parameters, context, executemany
        dbapi_connection = conn.connection.dbapi_connection
        fileno = _fileno(dbapi_connection)
        if fileno is not None:
            current.key = id(dbapi_connection)
            watchdog.watch(current.key, fileno, seconds)

    def done(*_: Any) -> None:
        if current.key is not None:
            watchdog.release(current.key)
            current.key = None

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", done)
    event.listen(engine, "handle_error", done)
