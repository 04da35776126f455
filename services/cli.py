"""Service subcommands of ``mona``: ``serve`` (embedded API + worker), ``api``, ``worker`` and ``db upgrade``.

Registered through the ``mona.commands`` entry point, so the ML library's CLI never imports the service.
"""

from __future__ import annotations

import argparse
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
    worker.set_defaults(handler=_worker)

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations (alembic upgrade head)")
    upgrade.set_defaults(handler=_db_upgrade)


def _serve(args: argparse.Namespace) -> int:
    from services.embedded import free_port, serve

    port = args.port or (free_port(args.host) if args.demo else 8000)
    return serve(host=args.host, port=port, data_dir=args.data_dir, api_key=args.api_key, demo=args.demo)


def _api(args: argparse.Namespace) -> int:
    from services.api.main import run_api

    return run_api(host=args.host, port=args.port, workers=args.workers)


def _worker(args: argparse.Namespace) -> int:
    from services.worker.main import run_worker

    return run_worker(queues=args.queues, concurrency=args.concurrency)


def _db_upgrade(args: argparse.Namespace) -> int:
    from services.common.migrate import upgrade_head

    upgrade_head()
    return 0
