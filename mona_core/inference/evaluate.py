"""Score an exported model on a dataset split: segment each labelled volume with ONNX Runtime, then DSC/ASD.

Torch-free, like the rest of ``inference``: the API process can run it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mona_core.data.dataset import DatasetIndex
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_image, read_label, write_mask
from mona_core.metrics import MetricAccumulator, evaluate_case, spacing_zyx_from_xyz
from mona_core.report import save_overlay_png

logger = logging.getLogger(__name__)

ASD_UNIT = "mm (from the NIfTI spacing; on data whose headers say 1 x 1 x 1, such as ACDC, this is voxels)"


def evaluate_model(
    segmenter: Segmenter,
    index: DatasetIndex,
    split: str,
    out_dir: Path | None = None,
    on_case: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Per case and per class DSC/ASD on ``split`` plus the means; masks and overlays go to ``out_dir`` if given."""
    classes = segmenter.manifest.classes
    if tuple(classes) != tuple(index.classes):
        raise ValueError(f"expected the dataset's classes to be the model's {list(classes)}, got {list(index.classes)}")
    cases = [case for case in index.cases_in(split) if case.label is not None]
    if not cases:
        raise ValueError(f"expected labelled cases in split {split!r}, got none")
    accumulator = MetricAccumulator(classes, unit=ASD_UNIT)
    for number, case in enumerate(cases, start=1):
        image = read_image(case.image)
        assert case.label is not None
        label = read_label(case.label, image.geometry, len(classes))
        mask = segmenter.segment(image)
        accumulator.add(
            evaluate_case(
                mask.array,
                label.array,
                classes,
                spacing_zyx_from_xyz(image.geometry.spacing),
                case_id=case.case_id,
            )
        )
        if out_dir is not None:
            write_mask(mask.array, mask.geometry, out_dir / "masks" / f"{case.case_id}.nii.gz")
            save_overlay_png(
                image.array,
                mask.array,
                out_dir / "overlays" / f"{case.case_id}.png",
                label=label.array,
                class_names=classes,
                title=case.case_id,
            )
        if on_case is not None:
            on_case(case.case_id, number, len(cases))
    return {"split": split, **accumulator.aggregate()}
