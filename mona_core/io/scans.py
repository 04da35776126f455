"""One entry point for any scan on disk: a NIfTI / MHA / NRRD file or a folder holding one DICOM series.

``read_scan`` dispatches on the path (a folder is a DICOM series, a file is read by its suffix) and keeps the DICOM
series beside the volume, for a DICOM SEG writer. ``find_scans`` lists the scans of a batch folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mona_core.io.dicom import DicomSeries, read_dicom_series
from mona_core.io.errors import DicomError
from mona_core.io.formats import is_image_name, strip_image_suffix
from mona_core.io.nifti import Volume, read_image


@dataclass(frozen=True)
class Scan:
    """A scan's volume and, when it was read from a DICOM folder, its series (UID and source files)."""

    volume: Volume
    series: DicomSeries | None = None


def read_scan(path: str | Path, series_uid: str | None = None, max_voxels: int | None = None) -> Scan:
    """Read a NIfTI, MHA or NRRD file (by suffix) or the DICOM image series of a folder (``series_uid`` chooses
    among several). ``max_voxels`` bounds the volume before any voxel is decoded (``VolumeTooLarge``)."""
    path = Path(path)
    if path.is_dir():
        series = read_dicom_series(path, series_uid=series_uid, max_voxels=max_voxels)
        return Scan(volume=series.volume, series=series)
    if series_uid is not None:
        raise DicomError(f"expected a DICOM folder for a series UID, got the file {path.name}")
    return Scan(volume=read_image(path, max_voxels=max_voxels))


@dataclass(frozen=True)
class ScanInput:
    """One scan of a batch folder: ``name`` (the file name without its suffix, or the folder's name) names its
    outputs; ``is_folder``: a sub-folder, expected to hold a DICOM series."""

    name: str
    path: Path
    is_folder: bool


def find_scans(folder: str | Path, exclude: Iterable[str | Path] = ()) -> list[ScanInput]:
    """The scans of a batch folder, by name: files ending in a recognised suffix, and sub-folders (each expected
    to hold one DICOM series; one that does not fails when it is read). Hidden entries, other files and the
    ``exclude`` paths (an output folder inside the input folder) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"expected a folder of scans, got no folder at {folder.name}")
    skipped = {Path(p).resolve() for p in exclude}
    scans = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.resolve() in skipped:
            continue
        if entry.is_dir():
            scans.append(ScanInput(entry.name, entry, is_folder=True))
        elif entry.is_file() and is_image_name(entry):
            scans.append(ScanInput(strip_image_suffix(entry), entry, is_folder=False))
    return scans
