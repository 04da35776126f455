"""Migrations and models must not drift: a database at ``head`` has exactly the tables and columns the models say."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

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
