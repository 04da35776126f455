from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.settings import EMBEDDED_BROKER, Settings, normalise_database_url
from services.common.storage import ArtifactStore, StorageError


def test_put_is_content_addressed_and_deduplicates(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    first = store.put_bytes(b"voxels", ".nii.gz")
    second = store.put_bytes(b"voxels", ".nii.gz")
    digest = hashlib.sha256(b"voxels").hexdigest()
    assert first == second and first.key == f"objects/{digest[:2]}/{digest}.nii.gz"
    assert store.path(first.key).read_bytes() == b"voxels"
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "objects/ab/../../x", "objects/zz/" + "0" * 64, "/abs/path", "objects/ab/" + "a" * 64 + ".sh"],
)
def test_keys_that_are_not_store_keys_never_become_paths(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError, match="expected an artifact key"):
        ArtifactStore(tmp_path).path(key)


def test_run_dirs_take_only_service_ids_and_discard_stays_in_tmp(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.run_dir("a" * 32) == store.root / "runs" / ("a" * 32)
    with pytest.raises(StorageError):
        store.run_dir("../../x")
    with pytest.raises(StorageError):
        store.discard(tmp_path / "objects")
    with pytest.raises(StorageError):
        store.staging_file(".exe")


def test_staging_dir_is_removed_even_on_error(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging_dir() as folder:
        (folder / "partial").write_text("x")
        raise RuntimeError("boom")
    assert list((store.root / "tmp").iterdir()) == []


def test_settings_defaults_are_embedded_and_env_names_are_documented(tmp_path: Path) -> None:
    settings = Settings(MONA_DATA_DIR=tmp_path)  # type: ignore[call-arg]
    assert settings.sqlalchemy_url == f"sqlite:///{(tmp_path / 'mona.db').resolve()}"
    assert settings.broker_url == EMBEDDED_BROKER and settings.embedded_broker
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f.alias for f in Settings.model_fields.values() if f.alias and f.alias not in readme]
    assert missing == [], f"settings not documented in the README: {missing}"


def test_managed_postgres_urls_use_psycopg3() -> None:
    assert normalise_database_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"
