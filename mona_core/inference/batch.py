"""Segment one scan or a folder of scans with one loaded model: the loop the CLI and a batch worker task share.

A scan is a NIfTI / MHA / NRRD file or a folder holding one DICOM series (``mona_core.io.read_scan``). Its mask is
written on the scan's exact grid, as an image file (format by suffix) or, for a DICOM scan, as a DICOM SEG object.
In a folder, a scan that cannot be read, segmented or written is recorded with its error and the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mona_core.inference.segmenter import Segmenter
from mona_core.io import DicomError, Volume, find_scans, read_scan, write_dicom_seg, write_mask

logger = logging.getLogger(__name__)

MASK_SUFFIX: Final = ".nii.gz"
SEG_SUFFIX: Final = ".dcm"
ITEM_ERRORS: Final = (ValueError, OSError, RuntimeError)
"""What one bad scan of a batch may raise (NiftiError and DicomError are ValueErrors; onnxruntime and SimpleITK
raise RuntimeErrors); anything else is a bug and stops the batch."""


@dataclass(frozen=True)
class Timings:
    """Seconds spent reading, segmenting and writing one scan."""

    read: float
    segment: float
    write: float

    @property
    def total(self) -> float:
        return self.read + self.segment + self.write


@dataclass(frozen=True)
class Segmented:
    """One scan's mask (on the scan's grid), where it was written, and how long each step took."""

    mask: Volume
    image: Volume
    output: Path
    timings: Timings


def segment_scan(
    segmenter: Segmenter,
    source: str | Path,
    output: str | Path,
    *,
    dicom_seg: bool = False,
    series_uid: str | None = None,
    max_voxels: int | None = None,
) -> Segmented:
    """Read ``source`` (file or DICOM folder), segment it, write the mask to ``output``: an image file in the format
    of its suffix or, with ``dicom_seg``, a DICOM SEG object (``DicomError`` for a source that is not DICOM)."""
    started = time.perf_counter()
    scan = read_scan(source, series_uid=series_uid, max_voxels=max_voxels)
    if dicom_seg and scan.series is None:
        raise DicomError(f"expected a DICOM series for a DICOM SEG output, got the file {Path(source).name}")
    read_done = time.perf_counter()
    mask = segmenter.segment(scan.volume)
    segment_done = time.perf_counter()
    if scan.series is not None and dicom_seg:
        manifest = segmenter.manifest
        written = write_dicom_seg(
            mask.array, scan.series, manifest.classes, output, algorithm_version=manifest.onnx_sha256[:16]
        )
    else:
        written = write_mask(mask.array, mask.geometry, output)
    timings = Timings(read_done - started, segment_done - read_done, time.perf_counter() - segment_done)
    logger.info("segmented %s -> %s in %.2f s", source, written, timings.total)
    return Segmented(mask=mask, image=scan.volume, output=written, timings=timings)


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one scan of a folder: its output, or the error that made it fail."""

    name: str
    source: Path
    output: Path | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def segment_folder(
    segmenter: Segmenter,
    folder: str | Path,
    out_dir: str | Path,
    *,
    dicom_seg: bool = False,
    on_item: Callable[[BatchItem, int, int], None] | None = None,
    on_segmented: Callable[[str, Segmented], None] | None = None,
) -> list[BatchItem]:
    """Segment every scan of ``folder`` (``mona_core.io.find_scans``) into ``out_dir`` (created): ``<name>.nii.gz``,
    or with ``dicom_seg`` ``<name>.dcm`` for each DICOM folder. A bad scan becomes an item with its error; the others
    are still written. ``on_item(item, number, total)`` follows each scan; ``on_segmented`` gets each success."""
    out_dir = Path(out_dir)
    scans = find_scans(folder, exclude=[out_dir])
    out_dir.mkdir(parents=True, exist_ok=True)
    items, claimed = [], set[str]()
    for number, scan in enumerate(scans, start=1):
        output = out_dir / f"{scan.name}{SEG_SUFFIX if dicom_seg and scan.is_folder else MASK_SUFFIX}"
        started = time.perf_counter()
        try:
            if output.name in claimed:
                raise ValueError(f"expected one scan per output name, got another scan writing {output.name}")
            claimed.add(output.name)
            result = segment_scan(segmenter, scan.path, output, dicom_seg=dicom_seg and scan.is_folder)
        except ITEM_ERRORS as exc:
            item = BatchItem(scan.name, scan.path, None, str(exc), time.perf_counter() - started)
            logger.warning("failed to segment %s: %s", scan.path, exc)
        else:
            item = BatchItem(scan.name, scan.path, result.output, None, time.perf_counter() - started)
            if on_segmented is not None:
                on_segmented(scan.name, result)
        items.append(item)
        if on_item is not None:
            on_item(item, number, len(scans))
    return items
