"""``mona export``: a run directory's best checkpoint → a model directory, checked on real validation slices."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mona_core.data.dataset import load_dataset
from mona_core.data.slicing import image_to_slices
from mona_core.export.onnx_export import ExportResult, export_checkpoint
from mona_core.io import read_image
from mona_core.training.checkpoint import checkpoint_for_export, load_checkpoint

logger = logging.getLogger(__name__)


def real_slices(run_dir: Path, preset: str, size: int, limit: int = 8) -> np.ndarray | None:
    """Up to ``limit`` preprocessed slices of the run's first validation (else training) volume."""
    run_file = run_dir / "run.json"
    if not run_file.is_file():
        return None
    root = Path(json.loads(run_file.read_text())["data_root"])
    if not root.is_dir():
        logger.warning("training data %s is gone: parity is checked on random inputs only", root)
        return None
    index = load_dataset(root, preset=preset)
    cases = index.cases_in("val") or index.cases_in("train")
    slices = image_to_slices(read_image(cases[0].image).array, preset, size)
    return slices[:limit]


def export_run(run_dir: Path, out_dir: Path, postprocess: str | None = None) -> ExportResult:
    checkpoint = load_checkpoint(checkpoint_for_export(run_dir))
    data = checkpoint["data"]
    real = real_slices(run_dir, data["preset"], data["size"])
    return export_checkpoint(checkpoint, out_dir, real_inputs=real, postprocess=postprocess)
