"""One ``Settings`` object for the API, the workers and the migrations, read from environment variables.

The embedded default needs no servers: SQLite in the data directory and Celery's filesystem transport in a
folder beside it. Point ``DATABASE_URL`` at Postgres and ``BROKER_URL`` at Redis for the real deployment; the code
path is the same.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_BROKER = "filesystem://"
WORKER_LOCK_NAME = "worker.lock"
"""The lock file an embedded worker holds (``flock``) in the data directory for its lifetime."""


class Settings(BaseSettings):
    """Environment variables (case-insensitive); each field's alias is the variable name."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, populate_by_name=True, extra="ignore")

    data_dir: Path = Field(default=Path("mona-data"), alias="MONA_DATA_DIR")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    broker_url: str = Field(default=EMBEDDED_BROKER, alias="BROKER_URL")
    api_key: str | None = Field(default=None, alias="MONA_API_KEY")
    max_upload_bytes: int = Field(default=1 << 30, alias="MONA_MAX_UPLOAD_BYTES")
    max_archive_bytes: int = Field(default=8 << 30, alias="MONA_MAX_ARCHIVE_BYTES")
    max_voxels: int = Field(default=512 * 512 * 1024, alias="MONA_MAX_VOXELS")
    inference_slots: int = Field(default=1, ge=1, le=64, alias="MONA_INFERENCE_SLOTS")
    """Segmentations that run the model at once in one API process; the others wait their turn. Each run uses all
    cores (onnxruntime's intra-op pool), so more slots than one only oversubscribe a CPU and multiply its memory."""
    worker_queues: str = Field(default="gpu,cpu", alias="MONA_WORKER_QUEUES")
    stale_job_seconds: float = Field(default=120.0, alias="MONA_STALE_JOB_SECONDS")
    visibility_timeout_s: int = Field(default=7 * 24 * 3600, alias="MONA_VISIBILITY_TIMEOUT_S")
    requeue_queued_seconds: float = Field(default=300.0, gt=0, alias="MONA_REQUEUE_QUEUED_SECONDS")
    db_connect_timeout_s: int = Field(default=5, ge=2, alias="MONA_DB_CONNECT_TIMEOUT_S")
    db_statement_timeout_s: float = Field(default=60.0, ge=0, alias="MONA_DB_STATEMENT_TIMEOUT_S")
    db_pool_timeout_s: float = Field(default=10.0, gt=0, alias="MONA_DB_POOL_TIMEOUT_S")
    ready_timeout_s: float = Field(default=3.0, gt=0, alias="MONA_READY_TIMEOUT_S")
    log_level: str = Field(default="INFO", alias="MONA_LOG_LEVEL")
    staging_max_age_s: float = Field(default=3600.0, gt=0, alias="MONA_STAGING_MAX_AGE_S")
    retention_days: float = Field(default=7.0, gt=0, alias="MONA_RETENTION_DAYS")
    object_grace_s: float = Field(default=60.0, ge=0, alias="MONA_OBJECT_GRACE_S")
    """A stored object younger than this is never removed as unreferenced (an upload may be about to use it)."""
    webhook_secret: str | None = Field(default=None, alias="MONA_WEBHOOK_SECRET")
    """Key of the HMAC that signs job-finished webhooks; without it, jobs with a ``callback_url`` are refused."""
    ready_requires_worker: bool = Field(default=False, alias="MONA_READY_REQUIRES_WORKER")
    """``/readyz`` also checks that the embedded worker lives (``mona serve`` sets it: it runs one)."""

    @property
    def artifact_root(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def sqlalchemy_url(self) -> str:
        """``DATABASE_URL``, else a SQLite file in the data directory (the embedded default)."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'mona.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith(EMBEDDED_BROKER)

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    @property
    def worker_lock(self) -> Path:
        return self.data_dir / WORKER_LOCK_NAME


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for ``postgres://`` / ``postgresql://`` URLs (what managed Postgres services hand out)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
