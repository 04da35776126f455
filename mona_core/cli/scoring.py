"""``mona evaluate`` back ends: a mask against a label, or a model on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mona_core.data.dataset import load_dataset
from mona_core.inference.evaluate import ASD_UNIT, evaluate_model
from mona_core.inference.segmenter import Segmenter
from mona_core.io import NiftiError, read_label
from mona_core.metrics import MetricAccumulator, evaluate_case, spacing_zyx_from_xyz


def evaluate_files(pred_path: Path, label_path: Path, classes: str | None) -> dict[str, Any]:
    """DSC/ASD of one predicted mask against its label; both must lie on the same grid."""
    label = read_label(label_path)
    pred = read_label(pred_path)
    if not pred.geometry.matches(label.geometry):
        raise NiftiError(
            f"expected the prediction on the label's grid (size {label.geometry.size}), got size {pred.geometry.size}"
        )
    highest = int(max(np.max(pred.array), np.max(label.array), 1))
    names = classes.split(",") if classes else ["background", *(f"class{i}" for i in range(1, highest + 1))]
    if highest >= len(names):
        raise ValueError(f"expected label values below {len(names)} for classes {names}, got {highest}")
    accumulator = MetricAccumulator(names, unit=ASD_UNIT)
    accumulator.add(
        evaluate_case(
            pred.array,
            label.array,
            names,
            spacing_zyx_from_xyz(label.geometry.spacing),
            case_id=pred_path.name,
        )
    )
    return accumulator.aggregate()


def evaluate_model_dir(
    model_dir: Path, data: Path, split: str, out: Path | None, device: str, postprocess: str | None = None
) -> dict[str, Any]:
    """Segment every labelled case of ``split`` with the exported model (post-processing its masks as its manifest
    says, or as ``postprocess``) and score it."""
    segmenter = Segmenter(model_dir, device=device, postprocess=postprocess)
    index = load_dataset(data, preset=segmenter.manifest.preset)
    return evaluate_model(segmenter, index, split, out_dir=out)
