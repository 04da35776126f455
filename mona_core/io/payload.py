"""A raw pass over a NIfTI file's voxel bytes, before SimpleITK reads it.

ITK's NIfTI reader zero-fills voxel data missing from a truncated file and turns NaN / inf into 0, so neither
can be caught after reading. One streaming read here checks both (and a broken gzip stream) in about 20 ms for an
ACDC volume, without holding the whole file twice in memory. It also refuses, before decoding any voxel, a volume
whose header announces more than ``max_voxels``, and stops reading a stream that inflates to more than its header
declares (plus ``TRAILING_SLACK``): a gzip bomb is never fully inflated.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import numpy as np

from mona_core.io.errors import NiftiError, VolumeTooLarge

_FLOAT_CODES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64 voxels
_COMPLEX_CODES = {32: "complex64", 1792: "complex128", 2048: "complex256"}
_CHUNK = 1 << 22
TRAILING_SLACK = 1 << 20
"""Bytes tolerated after the declared voxel data (extensions, padding) before the file counts as a bomb."""


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...


class _Header(NamedTuple):
    order: Literal["<", ">"]
    voxels: int
    bitpix: int
    code: int
    offset: int
    spacing: tuple[float, ...]


def _dims_product(dims: tuple[int, ...], name: str) -> int:
    rank = dims[0]
    if not 1 <= rank <= 7:
        raise NiftiError(f"expected 1 to 7 dimensions in the NIfTI header, got {rank} in {name}")
    extents = [int(v) for v in dims[1 : rank + 1]]
    if min(extents) < 1:
        raise NiftiError(f"expected positive extents in the NIfTI header, got {extents} in {name}")
    return int(np.prod(extents, dtype=np.int64))


def _spatial(dims: tuple[int, ...], pixdim: tuple[float, ...]) -> tuple[float, ...]:
    """The voxel spacing of the spatial axes the header declares (at most three)."""
    return tuple(float(v) for v in pixdim[1 : 1 + min(max(dims[0], 1), 3)])


def _check_header(header: _Header, name: str) -> None:
    """Refuse complex voxels and a spacing that is zero, negative or not finite (ITK would read 1.0 silently)."""
    if header.code in _COMPLEX_CODES:
        kind = _COMPLEX_CODES[header.code]
        raise NiftiError(
            f"expected real-valued voxels, got complex ones ({kind}, NIfTI datatype {header.code}) in {name}"
        )
    if not all(np.isfinite(v) and v > 0 for v in header.spacing):
        spacing = ", ".join(repr(v) for v in header.spacing)
        raise NiftiError(f"expected a positive, finite voxel spacing (pixdim), got ({spacing}) in {name}")


def _parse_header(head: bytes, name: str) -> _Header:
    """Byte order, voxel count, bits per voxel, datatype code and voxel offset of a NIfTI-1 or NIfTI-2 header."""
    orders: tuple[Literal["<", ">"], ...] = ("<", ">")
    for order in orders:
        size = struct.unpack(f"{order}i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(f"{order}8h", head[40:56])
            code, bitpix = struct.unpack(f"{order}2h", head[70:74])
            offset = int(struct.unpack(f"{order}f", head[108:112])[0])
            pixdim = struct.unpack(f"{order}8f", head[76:108])
            return _Header(order, _dims_product(dims, name), bitpix, code, max(offset, 348), _spatial(dims, pixdim))
        if size == 540 and len(head) >= 540:
            code, bitpix = struct.unpack(f"{order}2h", head[12:16])
            dims = struct.unpack(f"{order}8q", head[16:80])
            offset = int(struct.unpack(f"{order}q", head[168:176])[0])
            pixdim = struct.unpack(f"{order}8d", head[104:168])
            return _Header(order, _dims_product(dims, name), bitpix, code, max(offset, 540), _spatial(dims, pixdim))
    raise NiftiError(f"expected a NIfTI-1 or NIfTI-2 header, got none in {name}")


def check_payload(path: Path, max_voxels: int | None = None) -> None:
    """Raise ``NiftiError`` for a broken gzip stream, complex voxels, a zero, negative or non-finite spacing, missing
    or excess voxel bytes, or NaN / infinite float voxels;
    ``VolumeTooLarge`` when the header announces more than ``max_voxels`` voxels."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                _scan(stream, path.name, max_voxels)
        else:
            with path.open("rb") as stream:
                _scan(stream, path.name, max_voxels)
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiError(f"expected a complete NIfTI file, got a broken one ({exc}) in {path.name}") from exc


def _scan(stream: _Stream, name: str, max_voxels: int | None) -> None:
    header = _parse_header(stream.read(540), name)
    _check_header(header, name)
    if not 1 <= header.bitpix <= 128:
        raise NiftiError(f"expected 1 to 128 bits per voxel in the NIfTI header, got {header.bitpix} in {name}")
    if max_voxels is not None and header.voxels > max_voxels:
        raise VolumeTooLarge(f"expected a volume of at most {max_voxels} voxels, got {header.voxels} in {name}")
    stream.seek(header.offset)
    dtype = np.dtype(_FLOAT_CODES[header.code]).newbyteorder(header.order) if header.code in _FLOAT_CODES else None
    step = _CHUNK - _CHUNK % (dtype.itemsize if dtype is not None else 1)
    expected, found, bad = header.voxels * header.bitpix // 8, 0, 0
    while chunk := stream.read(step):
        found += len(chunk)
        if found > expected + TRAILING_SLACK:
            raise NiftiError(
                f"expected {expected} bytes of voxel data as the header declares, got more in {name} "
                "(a gzip bomb or trailing data)"
            )
        if dtype is not None:
            values = np.frombuffer(chunk[: len(chunk) - len(chunk) % dtype.itemsize], dtype=dtype)
            bad += int((~np.isfinite(values)).sum())
    if found < expected:
        raise NiftiError(f"expected {expected} bytes of voxel data, got {found} in {name} (a truncated file)")
    if bad:
        raise NiftiError(f"expected finite intensities, got {bad} NaN or infinite voxels in {name}")
