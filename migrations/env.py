"""Alembic environment: the target metadata is the service's db models, nothing else."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from services.common.models import Base

config = context.config
target_metadata = Base.metadata
_url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
if not _url:
    raise SystemExit("expected a database URL: run `mona db upgrade`, or pass `-x url=...` to alembic")
config.set_main_option("sqlalchemy.url", _url.replace("%", "%%"))


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
