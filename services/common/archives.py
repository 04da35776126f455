"""Safe unpacking of ``.zip`` / ``.tar.gz`` dataset archives in nnU-Net raw layout.

Accepted members: ``imagesTr/<name>``, ``labelsTr/<name>``, ``imagesTs/<name>`` (``.nii[.gz]``, ``.mha``,
``.nrrd``), ``dataset.json``, ``splits.json`` and those folders, optionally all under one top folder
(``Dataset001_X/imagesTr/...``), which is stripped.
macOS extras (``__MACOSX/``, ``.DS_Store``, ``._*``) are skipped; anything else is refused with ``ArchiveError``:
absolute paths, ``..``, backslashes, symlinks, hard links, devices, FIFOs, sparse or encrypted members, unknown
files, repeated names, more than ``max_members`` members, a member above ``max_member_bytes`` or a total above
``max_total_bytes``.

Sizes are checked twice: the declared sizes before a byte is extracted, and the bytes actually written while
extracting (a zip can lie about its sizes). A ``.tar.gz`` is first scanned header by header, so that a huge pax or
GNU long-name header (which ``tarfile`` would read into memory) is refused before ``tarfile`` sees it.
"""

from __future__ import annotations

import gzip
import logging
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

logger = logging.getLogger(__name__)

MAX_MEMBERS = 10_000
METADATA_LIMIT = 1 << 16  # bytes of one pax / GNU long-name header
_BLOCK = 512
_CHUNK = 1 << 20
_LAYOUT_DIRS = ("imagesTr", "labelsTr", "imagesTs")
_LAYOUT_JSON = ("dataset.json", "splits.json")
_LAYOUT_FILE = re.compile(
    r"^(imagesTr|labelsTr|imagesTs)/[A-Za-z0-9][A-Za-z0-9_.-]{0,250}\.(nii(\.gz)?|mha|nrrd)$", re.IGNORECASE
)
_LAYOUT_HELP = (
    "imagesTr/*.nii.gz, labelsTr/*.nii.gz, imagesTs/*.nii.gz (or .nii, .mha, .nrrd), dataset.json, splits.json"
)
_SERIES_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,250}")
_TAR_METADATA = (b"x", b"g", b"X", b"L", b"K")
_TAR_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # tarfile skips no data after these headers


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ArchiveError(ValueError):
    """An archive that is not a safe nnU-Net raw dataset; the API answers 422."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int
    max_member_bytes: int
    max_members: int = MAX_MEMBERS


def archive_suffix(filename: str) -> str:
    """``.zip`` or ``.tar.gz`` (also for ``.tgz``) for an archive file name; anything else raises."""
    lowered = filename.lower()
    if lowered.endswith(".zip"):
        return ".zip"
    if lowered.endswith((".tar.gz", ".tgz")):
        return ".tar.gz"
    raise ArchiveError(f"expected a .zip, .tar.gz or .tgz archive, got {filename!r}")


@dataclass
class _Unpacker:
    """Layout rules and size budgets shared by the zip and tar paths."""

    dest: Path
    limits: ArchiveLimits
    flat: bool = False
    """A DICOM series: files at the top level or in one folder, any safe names (no nnU-Net layout)."""
    members: int = 0
    declared: int = 0
    written: int = 0
    prefixes: set[str] = field(default_factory=set)
    extracted: set[str] = field(default_factory=set)

    def declare(self, name: str, size: int) -> None:
        self.members += 1
        self.declared += size
        if self.members > self.limits.max_members:
            raise ArchiveError(f"expected at most {self.limits.max_members} archive members, got more")
        if size > self.limits.max_member_bytes:
            raise ArchiveError(
                f"expected members of at most {self.limits.max_member_bytes} bytes, got {size} in {name!r}"
            )
        if self.declared > self.limits.max_total_bytes:
            raise ArchiveError(f"expected at most {self.limits.max_total_bytes} bytes unpacked, got more")

    def target(self, name: str, is_dir: bool) -> str | None:
        """The layout path of a member (top folder stripped), None for a folder or a skipped extra; else raise."""
        parts = _safe_parts(name)
        if not parts or _is_extra(parts):
            return None
        if self.flat:
            return self._flat_target(name, parts, is_dir)
        prefix, rest = ("", parts) if parts[0] in (*_LAYOUT_DIRS, *_LAYOUT_JSON) else (parts[0], parts[1:])
        self.prefixes.add(prefix)
        if len(self.prefixes) > 1:
            raise ArchiveError(f"expected only {_LAYOUT_HELP}, under one top folder at most, got {name!r}")
        relative = "/".join(rest)
        if is_dir and (not rest or relative in _LAYOUT_DIRS):
            return None
        if is_dir or not (relative in _LAYOUT_JSON or _LAYOUT_FILE.match(relative)):
            raise ArchiveError(f"expected only {_LAYOUT_HELP}, under one top folder at most, got {name!r}")
        if relative in self.extracted:
            raise ArchiveError(f"expected each archive member once, got {name!r} twice")
        self.extracted.add(relative)
        return relative

    def _flat_target(self, name: str, parts: list[str], is_dir: bool) -> str | None:
        if is_dir and len(parts) == 1:
            return None
        if len(parts) > 2 or is_dir:
            raise ArchiveError(f"expected the series' files at the top level or in one folder, got {name!r}")
        self.prefixes.add(parts[0] if len(parts) == 2 else "")
        if len(self.prefixes) > 1:
            raise ArchiveError(f"expected the series' files at the top level or in one folder, got {name!r}")
        if not _SERIES_FILE.fullmatch(parts[-1]):
            raise ArchiveError(f"expected file names of A-Z a-z 0-9 _ . - in the series, got {name!r}")
        if parts[-1] in self.extracted:
            raise ArchiveError(f"expected each archive member once, got {name!r} twice")
        self.extracted.add(parts[-1])
        return parts[-1]

    def write(self, source: _Readable, relative: str, declared: int) -> None:
        """Copy one member, counting the bytes actually produced against its declared size and the budgets."""
        path = self.dest / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        cap = min(declared, self.limits.max_member_bytes)
        size = 0
        with path.open("xb") as sink:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                self.written += len(chunk)
                if size > cap or self.written > self.limits.max_total_bytes:
                    raise ArchiveError(f"expected {relative!r} to unpack to {declared} bytes, got more")
                sink.write(chunk)


def _safe_parts(name: str) -> list[str]:
    if "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"expected relative POSIX member names, got {name!r}")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise ArchiveError(f"expected member names without '..', got {name!r}")
    return parts


def _is_extra(parts: list[str]) -> bool:
    return "__MACOSX" in parts or parts[-1] == ".DS_Store" or parts[-1].startswith("._")


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """Unpack ``archive`` (``.zip`` or ``.tar.gz`` by its name) into ``dest``; return the number of files written."""
    unpacker = _Unpacker(dest=dest, limits=limits)
    try:
        if archive_suffix(archive.name) == ".zip":
            _extract_zip(archive, unpacker)
        else:
            _prescan_tar(archive, limits)
            _extract_tar(archive, unpacker)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"expected a readable archive, got a broken one ({exc})") from exc
    except OSError as exc:
        raise ArchiveError(f"expected a readable archive, got an error while unpacking ({exc})") from exc
    logger.info("unpacked %d files (%d bytes) from %s", len(unpacker.extracted), unpacker.written, archive.name)
    return len(unpacker.extracted)


def extract_series_zip(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """Unpack a ``.zip`` holding one DICOM series (its files at the top level or in one folder) into ``dest``, with
    the same safety rules as dataset archives; return the number of files written."""
    unpacker = _Unpacker(dest=dest, limits=limits, flat=True)
    try:
        _extract_zip(archive, unpacker)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"expected a readable zip, got a broken one ({exc})") from exc
    except OSError as exc:
        raise ArchiveError(f"expected a readable zip, got an error while unpacking ({exc})") from exc
    if not unpacker.extracted:
        raise ArchiveError("expected the files of a DICOM series in the zip, got none")
    return len(unpacker.extracted)


def _extract_zip(archive: Path, unpacker: _Unpacker) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        for info in infos:
            _check_zip_member(info)
            unpacker.declare(info.filename, info.file_size)
        targets = [(info, unpacker.target(info.filename, info.is_dir())) for info in infos]
        for info, relative in targets:
            if relative is not None:
                with bundle.open(info) as source:
                    unpacker.write(source, relative, info.file_size)


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & 0x1:
        raise ArchiveError(f"expected unencrypted members, got encrypted {info.filename!r}")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip stores no Unix file type
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(f"expected regular files and folders, got a link or special file {info.filename!r}")


def _extract_tar(archive: Path, unpacker: _Unpacker) -> None:
    with tarfile.open(archive, "r:gz") as bundle:
        for member in bundle:
            if not (member.isfile() or member.isdir()) or member.issparse():
                raise ArchiveError(f"expected regular files and folders, got a link or special file {member.name!r}")
            unpacker.declare(member.name, member.size)
            relative = unpacker.target(member.name, member.isdir())
            source = bundle.extractfile(member) if relative is not None else None
            if source is not None and relative is not None:
                with source:
                    unpacker.write(source, relative, member.size)


def _prescan_tar(archive: Path, limits: ArchiveLimits) -> None:
    """Walk the tar headers of the decompressed stream, refusing oversized members before ``tarfile`` reads any."""
    total, headers = 0, 0
    with gzip.open(archive, "rb") as stream:
        while len(block := stream.read(_BLOCK)) == _BLOCK and block != bytes(_BLOCK):
            headers += 1
            kind, size = block[156:157], _tar_size(block[124:136])
            total += size
            if headers > 2 * limits.max_members:
                raise ArchiveError(f"expected at most {limits.max_members} archive members, got more")
            if kind in _TAR_METADATA and size > METADATA_LIMIT:
                raise ArchiveError(f"expected tar metadata headers of at most {METADATA_LIMIT} bytes, got {size}")
            if size > limits.max_member_bytes:
                raise ArchiveError(f"expected members of at most {limits.max_member_bytes} bytes, got {size}")
            if total > limits.max_total_bytes:
                raise ArchiveError(f"expected at most {limits.max_total_bytes} bytes unpacked, got more")
            if kind in _TAR_NO_DATA:
                continue
            data = _skip_data(stream, -(-size // _BLOCK) * _BLOCK)
            if kind in (b"x", b"X") and re.search(rb"(^|\n)\d+ size=", data[:size]):
                raise ArchiveError("expected no pax size overrides in the archive, got one")


def _tar_size(field: bytes) -> int:
    digits = field.rstrip(b"\x00 ").lstrip(b" ")
    if not digits:
        return 0
    if not re.fullmatch(rb"[0-7]+", digits):
        raise ArchiveError(f"expected an octal member size in the tar header, got {field!r}")
    return int(digits, 8)


def _skip_data(stream: _Readable, size: int) -> bytes:
    """Read past ``size`` bytes of member data in 1 MiB chunks; return only the first ones (a pax header's text)."""
    first = stream.read(min(size, METADATA_LIMIT + _BLOCK))
    remaining = size - len(first)
    while remaining > 0 and (chunk := stream.read(min(remaining, _CHUNK))):
        remaining -= len(chunk)
    return first
