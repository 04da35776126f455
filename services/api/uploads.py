"""Streaming ``multipart/form-data`` reception with a size cap.

Starlette's ``request.form()`` spools whole parts before a route sees them; here the body is parsed chunk by chunk
as it arrives (python-multipart's streaming parser) and each file part is written straight to a staging file of
the artifact store. The whole body is capped: a declared ``Content-Length`` above the cap is refused before any
byte is read, and an undeclared (chunked) body is cut off as soon as it passes the cap (413). On any failure the
partial files are deleted, so a refused upload leaves nothing behind.

File names are checked as soon as a part's headers arrive (``FileRule`` returns the staging suffix or raises), so
a wrong file type is refused without reading its bytes. Disk writes happen inline on the event loop: they land in
the page cache and cost less than a hop to a worker thread per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastapi import HTTPException, Request, status
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from services.api.errors import PayloadTooLarge
from services.common.storage import ArtifactStore

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

logger = logging.getLogger(__name__)

FIELD_LIMIT = 1024  # bytes of one non-file form field
MAX_PARTS = 16

FileRule = Callable[[str], str]
"""Maps a client file name to the staging suffix (``.nii.gz`` ...); raises for a name it does not accept."""


@dataclass(frozen=True)
class UploadSpec:
    """What one endpoint accepts: file fields (with their name rule), small text fields, and the body cap."""

    max_bytes: int
    files: Mapping[str, FileRule]
    fields: tuple[str, ...] = ()


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int


@dataclass
class Received:
    """The parsed body: file parts (already on disk under ``tmp/``) and text fields."""

    files: dict[str, ReceivedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self, store: ArtifactStore) -> None:
        """Delete the staging files that were not moved into the store (a no-op for those that were)."""
        store.discard(*(received.path for received in self.files.values()))


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"expected a multipart/form-data body with a boundary, got {content_type or 'no Content-Type'!r}",
        )
    return options[b"boundary"]


def _check_declared_length(content_length: str | None, max_bytes: int) -> None:
    if content_length is None:
        return
    if not content_length.isdigit():
        raise _bad_request(f"expected a numeric Content-Length, got {content_length!r}")
    if int(content_length) > max_bytes:
        raise PayloadTooLarge(f"expected an upload of at most {max_bytes} bytes, got {int(content_length)}")


class _Receiver:
    """python-multipart callbacks: collect each part's headers, then route its bytes to a file or a small buffer."""

    def __init__(self, spec: UploadSpec, store: ArtifactStore) -> None:
        self.spec, self.store = spec, store
        self.received = Received()
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._file: BinaryIO | None = None
        self._file_info: ReceivedFile | None = None
        self._buffer: bytearray | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _unprocessable(f"expected at most {MAX_PARTS} form parts, got more")
        self._disposition, self._name = b"", ""
        self._file, self._file_info, self._buffer = None, None, None

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _bad_request("expected a Content-Disposition header with a name in every part, got none")
        self._name = options[b"name"].decode("utf-8", errors="replace")
        if self._name in self.received.files or self._name in self.received.fields:
            raise _unprocessable(f"expected each form field once, got {self._name!r} twice")
        if b"filename" in options:
            self._open_file(options[b"filename"].decode("utf-8", errors="replace"))
        elif self._name in self.spec.fields:
            self._buffer = bytearray()
        else:
            expected = sorted([*self.spec.files, *self.spec.fields])
            raise _unprocessable(f"expected form fields among {expected}, got {self._name!r}")

    def _open_file(self, filename: str) -> None:
        rule = self.spec.files.get(self._name)
        if rule is None:
            raise _unprocessable(f"expected file fields among {sorted(self.spec.files)}, got {self._name!r}")
        if not filename:  # an empty file input of a browser form: no file chosen
            return
        path = self.store.staging_file(rule(filename))
        self._file_info = ReceivedFile(field=self._name, filename=filename, path=path, size=0)
        self.received.files[self._name] = self._file_info
        self._file = path.open("xb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
        elif self._buffer is not None:
            self._buffer.extend(data[start:end])
            if len(self._buffer) > FIELD_LIMIT:
                raise PayloadTooLarge(f"expected form field {self._name!r} of at most {FIELD_LIMIT} bytes, got more")

    def _part_end(self) -> None:
        if self._file is not None and self._file_info is not None:
            self._file_info.size = self._file.tell()
            self._file.close()
            self._file = None
        elif self._buffer is not None:
            try:
                self.received.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _unprocessable(f"expected UTF-8 text in form field {self._name!r}, got other bytes") from exc

    def abort(self) -> None:
        """Close the file being written, then delete every staging file of this request."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.received.discard(self.store)


async def receive_multipart(request: Request, store: ArtifactStore, spec: UploadSpec) -> Received:
    """Parse the request body as it streams in; files go to ``tmp/``. The caller discards them when done."""
    boundary = _boundary(request.headers.get("content-type"))
    _check_declared_length(request.headers.get("content-length"), spec.max_bytes)
    receiver = _Receiver(spec, store)
    try:
        total = await _feed(request, MultipartParser(boundary, receiver.callbacks()), spec.max_bytes)
    except MultipartParseError as exc:
        receiver.abort()
        raise _bad_request(f"expected a well-formed multipart/form-data body, got {exc}") from exc
    except ClientDisconnect as exc:
        receiver.abort()
        raise _bad_request("expected a complete request body, got a client disconnect") from exc
    except BaseException:
        receiver.abort()
        raise
    logger.debug("received %d bytes: files %s", total, sorted(receiver.received.files))
    return receiver.received


async def _feed(request: Request, parser: MultipartParser, max_bytes: int) -> int:
    """Push the body through ``parser`` chunk by chunk, counting bytes against the cap; return the total."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"expected an upload of at most {max_bytes} bytes, got more")
        parser.write(chunk)
    parser.finalize()
    if parser.state != MultipartState.END:
        raise _bad_request("expected a complete multipart/form-data body, got a truncated one")
    return total
