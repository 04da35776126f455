"""The manifest of an exported model directory, and the checks that make a directory trustworthy.

A model directory holds ``model.onnx`` and ``manifest.json``. The manifest says how to feed the network
(intensity preset, square slice size, tensor names), what comes out (class names, ``classes[0] ==
"background"``), how the ONNX graph was checked against torch (``parity``) and where it came from
(``source``), and what is done to each predicted mask (``postprocess``: optional, "none" when absent, so
manifests written before it still load). It also pins the ONNX file's sha256, so a tampered or truncated model is
refused before it segments anything.

This module must not import torch: torch-free inference reads manifests through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from mona_core.data.presets import PRESETS
from mona_core.data.slicing import POSTPROCESSING

logger = logging.getLogger(__name__)

MANIFEST_FORMAT: Final = "mona-model/1"
OPSET: Final = 17
MODEL_FILE: Final = "model.onnx"
MANIFEST_FILE: Final = "manifest.json"

_REQUIRED_KEYS: Final = (
    "format",
    "classes",
    "preset",
    "size",
    "opset",
    "onnx_sha256",
    "input_name",
    "output_name",
    "model_config",
    "train_config",
    "parity",
    "source",
)
_DICT_KEYS: Final = ("model_config", "train_config", "parity", "source")


class ManifestError(ValueError):
    """A model directory or its manifest is unusable; the message says what was expected and what was seen."""


@dataclass(frozen=True)
class Manifest:
    """Everything inference needs to know about an exported network, beside the ONNX graph itself."""

    classes: tuple[str, ...]
    preset: str
    size: int
    opset: int
    onnx_sha256: str
    input_name: str
    output_name: str
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    parity: dict[str, Any]
    source: dict[str, Any]
    format: str = MANIFEST_FORMAT
    postprocess: str = "none"

    def __post_init__(self) -> None:
        _check_classes(self.classes)
        if self.preset not in PRESETS:
            raise ManifestError(f"expected a preset in {PRESETS}, got {self.preset!r}")
        if self.size <= 0:
            raise ManifestError(f"expected a positive slice size, got {self.size}")
        if len(self.onnx_sha256) != 64:
            raise ManifestError(f"expected a 64-character sha256 hex digest, got {self.onnx_sha256!r}")
        if self.postprocess not in POSTPROCESSING:
            raise ManifestError(f"expected a postprocess in {POSTPROCESSING}, got {self.postprocess!r}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse a manifest dict, checking the format tag, the required keys and their types."""
        if not isinstance(data, dict):
            raise ManifestError(f"expected a JSON object as manifest, got {type(data).__name__}")
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"expected manifest format {MANIFEST_FORMAT!r}, got {data.get('format')!r}")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise ManifestError(f"expected manifest keys {list(_REQUIRED_KEYS)}, got none for {missing}")
        for key in _DICT_KEYS:
            if not isinstance(data[key], dict):
                raise ManifestError(f"expected {key!r} to be an object, got {type(data[key]).__name__}")
        return cls(
            classes=tuple(_typed(data, "classes", list)),
            preset=_typed(data, "preset", str),
            size=_typed(data, "size", int),
            opset=_typed(data, "opset", int),
            onnx_sha256=_typed(data, "onnx_sha256", str),
            input_name=_typed(data, "input_name", str),
            output_name=_typed(data, "output_name", str),
            model_config=dict(data["model_config"]),
            train_config=dict(data["train_config"]),
            parity=dict(data["parity"]),
            source=dict(data["source"]),
            format=MANIFEST_FORMAT,
            postprocess=_typed({"postprocess": data.get("postprocess", "none")}, "postprocess", str),
        )


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    """``data[key]`` if it has type ``kind`` (bools are not ints here), else a ManifestError."""
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"expected {key!r} to be {kind.__name__}, got {type(value).__name__}")
    return value


def _check_classes(classes: tuple[str, ...]) -> None:
    if len(classes) < 2 or not all(isinstance(name, str) and name for name in classes):
        raise ManifestError(f"expected at least two non-empty class names, got {list(classes)}")
    if classes[0] != "background":
        raise ManifestError(f"expected classes[0] == 'background', got {classes[0]!r}")
    if len(set(classes)) != len(classes):
        raise ManifestError(f"expected distinct class names, got {list(classes)}")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so large models need little memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(manifest: Manifest, model_dir: str | Path) -> Path:
    """Write ``manifest.json`` into ``model_dir`` via a temporary file: readers never see half a manifest."""
    path = Path(model_dir) / MANIFEST_FILE
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def read_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` of ``model_dir`` (the ONNX file is not checked here)."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"expected {MANIFEST_FILE} in {model_dir}, found none")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"expected {MANIFEST_FILE} to be valid JSON, got a parse error ({exc})") from exc
    return Manifest.from_dict(data)


def load_model_dir(model_dir: str | Path) -> tuple[Path, Manifest]:
    """The ONNX path and manifest of a model directory, after checking the ONNX file's sha256.

    A missing file or a sha256 that differs from the manifest's (a tampered, truncated or swapped model)
    raises ManifestError.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ManifestError(f"expected a model directory, got no directory at {directory}")
    onnx_path = directory / MODEL_FILE
    if not onnx_path.is_file():
        raise ManifestError(f"expected {MODEL_FILE} in {directory}, found none")
    manifest = read_manifest(directory)
    actual = sha256_file(onnx_path)
    if actual != manifest.onnx_sha256:
        raise ManifestError(
            f"expected {MODEL_FILE} with sha256 {manifest.onnx_sha256}, got {actual} (tampered or corrupt model)"
        )
    logger.debug("model directory %s verified (sha256 %s)", directory, actual[:12])
    return onnx_path, manifest
