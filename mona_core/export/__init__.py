"""Export stage: a checkpoint becomes a model directory (``model.onnx`` + ``manifest.json``).

Importing this package must not import torch, because torch-free inference reads manifests through
``mona_core.export.manifest``. The torch-based exporter is therefore loaded lazily on first access to
``export_checkpoint``, ``ExportResult`` or ``ExportError``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mona_core.export.manifest import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MODEL_FILE,
    OPSET,
    Manifest,
    ManifestError,
    load_model_dir,
    read_manifest,
    sha256_file,
    write_manifest,
)

if TYPE_CHECKING:
    from mona_core.export.onnx_export import ExportError, ExportResult, export_checkpoint

_LAZY = frozenset({"ExportError", "ExportResult", "export_checkpoint"})


def __getattr__(name: str) -> Any:
    """Load the torch-based exporter only when one of its names is asked for."""
    if name in _LAZY:
        module = importlib.import_module("mona_core.export.onnx_export")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "MODEL_FILE",
    "OPSET",
    "ExportError",
    "ExportResult",
    "Manifest",
    "ManifestError",
    "export_checkpoint",
    "load_model_dir",
    "read_manifest",
    "sha256_file",
    "write_manifest",
]
