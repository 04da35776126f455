"""Apply the Alembic migrations in ``migrations/`` (what ``mona db upgrade`` and the API's prestart run)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from services.common.settings import get_settings

logger = logging.getLogger(__name__)


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    config.set_main_option("sqlalchemy.url", (url or get_settings().sqlalchemy_url).replace("%", "%%"))
    return config


def upgrade_head(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: the settings') to the newest revision."""
    target = url or get_settings().sqlalchemy_url
    if target.startswith("sqlite:///"):
        Path(target.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(target), "head")
    logger.info("database at head")
