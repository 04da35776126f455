"""DICOM Segmentation (SEG) out, with highdicom: a mask on a source series' grid, one segment per foreground class.

The mask comes from ``read_dicom_series`` (array axis 0 = the source files in slice order, axis 1 = rows, axis 2 =
columns), so frame ``k`` of the mask is the segmentation of source instance ``k``: highdicom references each source
instance and copies its plane position. Segment numbers are the label values (1 = ``classes[1]``, ...; class 0 is
background and gets no segment), BINARY, algorithm MONA of type AUTOMATIC. Frames where a segment is empty are left
out, as highdicom does by default.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Final

import numpy as np

from mona_core.io.dicom import DicomSeries
from mona_core.io.errors import DicomError
from mona_core.io.nifti import validate_label_array

ALGORITHM_NAME: Final = "MONA"
SEG_SERIES_NUMBER: Final = 900
"""Series number of written SEG objects, clear of scanner series numbers (which start at 1)."""


def _software_version() -> str:
    try:
        return version("mona-service")
    except PackageNotFoundError:
        return "unknown"


def write_dicom_seg(
    mask: np.ndarray,
    source: DicomSeries,
    classes: Sequence[str],
    path: str | Path,
    *,
    algorithm_version: str | None = None,
    series_description: str = "MONA segmentation",
) -> Path:
    """Write ``mask`` (z, y, x; label values index ``classes``, 0 = background) as a DICOM SEG object referencing
    ``source``'s series and instances; the write is atomic. ``algorithm_version`` identifies the model (default:
    the package version). Raises ``DicomError`` for a mask off the source grid or with labels outside ``classes``.
    """
    if len(classes) < 2:
        raise DicomError(f"expected background and at least one class, got {list(classes)}")
    if mask.shape != source.volume.geometry.shape:
        expected = source.volume.geometry.shape
        raise DicomError(f"expected a mask on the source grid, of shape {expected}, got {mask.shape}")
    labels = validate_label_array(mask, len(classes), "the mask")
    hd = importlib.import_module("highdicom")
    software = _software_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
        version=algorithm_version or software,
    )
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=tissue,
            segmented_property_type=tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(classes[1:], start=1)
    ]
    generate_uid = importlib.import_module("pydicom.uid").generate_uid
    seg = hd.seg.Segmentation(
        source_images=source.datasets(),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=software,
        device_serial_number="none",
        series_description=series_description,
        content_label="MONA",
    )
    return _save(seg, Path(path))


def _save(dataset: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    dataset.save_as(partial)  # type: ignore[attr-defined]
    partial.replace(path)
    return path
