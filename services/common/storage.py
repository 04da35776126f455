"""The artifact store: the only module that builds filesystem paths for the service.

Immutable artifacts are content-addressed (``objects/ab/<sha256><suffix>``): a retried task that writes the same
bytes lands on the same key and overwrites nothing it should not. Work in progress lives in ``tmp/`` (uploads
being received, staging folders; ``sweep_staging`` removes what a killed process left there) and ``runs/<job id>/``
(a training job's mutable run directory). Keys and ids are checked against strict patterns before becoming paths,
so no user-supplied name ever reaches the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".dcm", ".onnx", ".json", ".png", ".zip", ".tar.gz")
_KEY = re.compile(r"^objects/[0-9a-f]{2}/[0-9a-f]{64}(\.nii\.gz|\.nii|\.onnx|\.json|\.png|\.zip|\.tar\.gz)?$")
_ID = re.compile(r"^[0-9a-f]{32}$")


class StorageError(ValueError):
    """A key, id or suffix that must not become a path."""


@dataclass(frozen=True)
class Artifact:
    key: str
    sha256: str
    size: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        for folder in ("objects", "tmp", "runs"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def staging_file(self, suffix: str = "") -> Path:
        """A fresh path under ``tmp/`` for data being received; ``put`` moves it into the store or ``discard``."""
        if suffix and suffix not in SUFFIXES:
            raise StorageError(f"expected a suffix in {SUFFIXES}, got {suffix!r}")
        return self.root / "tmp" / f"{uuid.uuid4().hex}{suffix}"

    @contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A temporary folder under ``tmp/``, removed on exit whatever happens."""
        folder = self.root / "tmp" / uuid.uuid4().hex
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def put(self, source: Path, suffix: str) -> Artifact:
        """Move ``source`` into the store under its content hash (a duplicate is simply dropped)."""
        if suffix not in SUFFIXES:
            raise StorageError(f"expected a suffix in {SUFFIXES}, got {suffix!r}")
        digest, size = sha256_of(source), source.stat().st_size
        key = f"objects/{digest[:2]}/{digest}{suffix}"
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            source.unlink()
            os.utime(target)  # fresh again: a deletion racing with this upload leaves it (see deletion.py)
        else:
            source.replace(target)
        return Artifact(key=key, sha256=digest, size=size)

    def put_bytes(self, data: bytes, suffix: str) -> Artifact:
        staging = self.staging_file(suffix)
        staging.write_bytes(data)
        return self.put(staging, suffix)

    def copy_in(self, source: Path, suffix: str) -> Artifact:
        """Like ``put`` but leaves ``source`` where it is."""
        staging = self.staging_file(suffix)
        shutil.copyfile(source, staging)
        return self.put(staging, suffix)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise StorageError(f"expected an artifact key like objects/ab/<sha256>.nii.gz, got {key!r}")
        return self.root / key

    def run_dir(self, job_id: str) -> Path:
        """The mutable run directory of a training job (checkpoints, metrics) — named by the service's own id."""
        if not _ID.match(job_id):
            raise StorageError(f"expected a 32-character hex job id, got {job_id!r}")
        return self.root / "runs" / job_id

    def sweep_staging(self, max_age_s: float) -> tuple[int, int]:
        """Remove what ``tmp/`` holds that nothing touched for ``max_age_s`` seconds (uploads cut off by a killed
        process); returns (entries removed, bytes freed). A folder counts as touched when anything inside is."""
        cutoff, removed, freed = time.time() - max_age_s, 0, 0
        for entry in list((self.root / "tmp").iterdir()):
            try:
                if _last_modified(entry) >= cutoff:
                    continue
                size = _size_of(entry)
                self.discard(entry)
            except (FileNotFoundError, StorageError):  # moved or discarded by its owner meanwhile; a link
                continue
            removed, freed = removed + 1, freed + size
        return removed, freed

    def discard(self, *paths: Path) -> None:
        """Remove staging files or folders (only ever inside ``tmp/``)."""
        for path in paths:
            resolved = path.resolve()
            if resolved.parent != self.root / "tmp" and self.root / "tmp" not in resolved.parents:
                raise StorageError(f"expected a staging path under {self.root / 'tmp'}, got {path}")
            if resolved.is_dir():
                shutil.rmtree(resolved, ignore_errors=True)
            else:
                resolved.unlink(missing_ok=True)


def _last_modified(path: Path) -> float:
    """The newest modification time of ``path`` or, for a folder, of anything in it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for child in path.rglob("*"):
            newest = max(newest, child.lstat().st_mtime)
    return newest


def _size_of(path: Path) -> int:
    """Bytes of a file, or of the files in a folder."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(child.lstat().st_size for child in path.rglob("*") if child.is_file())
