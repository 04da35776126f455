"""Service subcommands of ``mona``: ``serve`` (embedded API + worker), ``api``, ``worker``, ``db upgrade`` and
``keys create|list|revoke``.

Registered through the ``mona.commands`` entry point, so the ML library's CLI never imports the service.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the API and a worker on this machine (SQLite + local broker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000 (with --demo: a free port)")
    serve.add_argument("--data-dir", type=Path, help="where the database, broker and artifacts live")
    serve.add_argument("--api-key", help="API key to accept (default: MONA_API_KEY, else one is generated)")
    serve.add_argument("--demo", action="store_true", help="run the REST demo against the server, then stop")
    serve.set_defaults(handler=_serve)

    api = sub.add_parser("api", help="run the REST API (runs database migrations first)")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(handler=_api)

    worker = sub.add_parser("worker", help="run a Celery worker for training, export and evaluation jobs")
    worker.add_argument("--queues", help="comma-separated queues (default: MONA_WORKER_QUEUES, gpu,cpu)")
    worker.add_argument("--concurrency", type=int, default=1, help="processes; use one per GPU")
    worker.add_argument(
        "--ping",
        action="store_true",
        help="health check instead of a worker: exit 0 when a worker on this host answers a Celery ping, else 1",
    )
    worker.add_argument("--ping-timeout", type=float, default=5.0, help="seconds to wait for the ping's answer")
    worker.set_defaults(handler=_worker)

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations (alembic upgrade head)")
    upgrade.set_defaults(handler=_db_upgrade)
    _register_keys(sub)


def _register_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list and revoke (against DATABASE_URL)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a named key and print it (the only time it is shown)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--project",
        default="default",
        help="the project the key works in: it sees and makes only that project's datasets, jobs, models and "
        "reports (default: %(default)s)",
    )
    create.add_argument("--admin", action="store_true", help="an admin key: sees and acts on every project")
    create.set_defaults(handler=_keys_create)
    listing = keys_sub.add_parser(
        "list", help="id, name, project, admin, created and revoked time of every key (never secrets)"
    )
    listing.set_defaults(handler=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id; the next request with it gets 403")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=_keys_revoke)


def _serve(args: argparse.Namespace) -> int:
    from services.embedded import free_port, serve

    port = args.port or (free_port(args.host) if args.demo else 8000)
    return serve(host=args.host, port=port, data_dir=args.data_dir, api_key=args.api_key, demo=args.demo)


def _api(args: argparse.Namespace) -> int:
    from services.api.main import run_api

    return run_api(host=args.host, port=args.port, workers=args.workers)


def _worker(args: argparse.Namespace) -> int:
    from services.worker.main import ping_local_worker, run_worker

    if args.ping:
        return 0 if ping_local_worker(args.ping_timeout) else 1
    return run_worker(queues=args.queues, concurrency=args.concurrency)


def _db_upgrade(args: argparse.Namespace) -> int:
    from services.common.migrate import upgrade_head

    upgrade_head()
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from mona_core.cli.console import emit
    from services.common.auth import create_key
    from services.common.db import session_scope
    from services.common.settings import get_settings

    with session_scope(get_settings().sqlalchemy_url) as session:
        made = create_key(session, args.name, args.project, args.admin)
        key_id = made.row.id
    scope = "admin: every project" if args.admin else f"project {args.project}"
    emit(f"created API key {key_id} ({args.name}, {scope}); store it now, it is not shown again:")
    emit(made.key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from mona_core.cli.console import emit
    from services.common.auth import list_keys
    from services.common.db import session_scope
    from services.common.settings import get_settings

    with session_scope(get_settings().sqlalchemy_url) as session:
        rows = [
            (row.id, row.name, row.project, "yes" if row.admin else "no", row.created_at, row.revoked_at)
            for row in list_keys(session)
        ]
    emit(f"{'id':<34}{'name':<24}{'project':<20}{'admin':<7}{'created':<27}revoked")
    for key_id, name, project, admin, created, revoked in rows:
        when = created.isoformat(timespec="seconds")
        emit(f"{key_id:<34}{name:<24}{project:<20}{admin:<7}{when:<27}{_when(revoked)}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from mona_core.cli.console import emit
    from services.common.auth import revoke_key
    from services.common.db import session_scope
    from services.common.settings import get_settings

    with session_scope(get_settings().sqlalchemy_url) as session:
        revoked_at = revoke_key(session, args.key_id).revoked_at
    emit(f"revoked API key {args.key_id} at {_when(revoked_at)}")
    return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")
