"""Migrations and models must not drift: a database at ``head`` has exactly the tables and columns the models say."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from services.common.migrate import alembic_config
from services.common.models import Base
from services.common.settings import Settings


def test_head_matches_the_models(service_settings: Settings) -> None:
    engine = create_engine(service_settings.sqlalchemy_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations drift: {diff}"


def test_database_is_at_the_single_head(service_settings: Settings) -> None:
    config = alembic_config(service_settings.sqlalchemy_url)
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1
    engine = create_engine(service_settings.sqlalchemy_url)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == heads[0]
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    expected = {"api_keys", "datasets", "cases", "jobs", "job_metrics", "job_logs", "models", "segmentations"}
    assert expected | {"reports", "report_entries"} <= tables


def test_projects_migration_keeps_what_each_existing_key_saw(isolated_settings: Settings) -> None:
    """0005: existing rows go to ``default``; the bootstrap key becomes admin, other keys stay in ``default``."""
    url = isolated_settings.sqlalchemy_url
    config = alembic_config(url)
    command.downgrade(config, "0004")
    engine = create_engine(url)
    with engine.begin() as connection:
        for key_id, name in (("a" * 32, "bootstrap"), ("b" * 32, "ci-bot")):
            connection.execute(
                text("INSERT INTO api_keys (id, name, key_hash, created_at) VALUES (:id, :name, :hash, :at)"),
                {"id": key_id, "name": name, "hash": key_id * 2, "at": datetime.now(UTC)},
            )
        connection.execute(
            text("INSERT INTO datasets (id, name, preset, classes, created_at) VALUES (:id, 'old', 'mri', :c, :at)"),
            {"id": "c" * 32, "c": '["background", "LV"]', "at": datetime.now(UTC)},
        )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        keys = dict(
            connection.execute(
                text("SELECT name, admin FROM api_keys WHERE id IN (:a, :b)"), {"a": "a" * 32, "b": "b" * 32}
            ).all()
        )
        projects = set(
            connection.execute(text("SELECT project FROM api_keys UNION SELECT project FROM datasets")).scalars()
        )
    engine.dispose()
    assert {name: bool(admin) for name, admin in keys.items()} == {"bootstrap": True, "ci-bot": False}
    assert projects == {"default"}
