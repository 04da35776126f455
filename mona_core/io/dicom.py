"""DICOM image series in (and out, for test data and phantom exports), on the grid SimpleITK's series reader builds.

GDCM (through SimpleITK) finds the series of a folder and orders their files along the slice normal; pydicom reads
the headers, so that before any pixel is decoded a series is checked: single-frame scalar images of one size and one
orientation, positions evenly spaced along the normal (a missing or duplicated slice is named, where ITK would only
warn and stretch the volume), at most ``max_voxels`` voxels. Objects that are not images (SR, SEG, RTSTRUCT, a stray
text file) are ignored. ``DicomSeries`` keeps what a DICOM SEG writer needs: the series UID and the source files in
slice order (``files[k]`` is slice ``k`` of the volume, array axis 0).
"""

from __future__ import annotations

import contextlib
import importlib
import locale
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final

import numpy as np

from mona_core.io.errors import DicomError, VolumeTooLarge
from mona_core.io.formats import is_image_name, load_sitk, to_3d
from mona_core.io.nifti import Volume, geometry_of

if TYPE_CHECKING:
    from pydicom import Dataset

logger = logging.getLogger(__name__)

NON_IMAGE_MODALITIES: Final = frozenset({"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG"})
"""Modalities of objects that share a folder with images but are no slices of a volume."""
GAP_TOLERANCE: Final = 0.01
"""Relative deviation of one slice step from the series' step that counts as uneven (a missing slice makes 1.0)."""
_FIRST: Final = 5
"""How many series or gaps an error message names before it says how many more there are."""


def _pydicom() -> ModuleType:
    """pydicom, imported on first use: a process that reads no DICOM does not pay its import time."""
    return importlib.import_module("pydicom")


@contextlib.contextmanager
def _gdcm() -> Iterator[None]:
    """Around a call into GDCM: ITK's warnings off ("No Series were found" on a folder of NIfTI files is an answer,
    not a problem; what matters is checked and raised here), and the process locale put back afterwards: GDCM's
    writer leaves LC_CTYPE at "C", after which Python reads text files as ASCII."""
    process_object = load_sitk().ProcessObject
    shown = process_object.GetGlobalWarningDisplay()
    saved = locale.setlocale(locale.LC_ALL)
    process_object.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        process_object.SetGlobalWarningDisplay(shown)
        locale.setlocale(locale.LC_ALL, saved)


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a folder: its UID, description, modality and files in GDCM's slice order."""

    series_uid: str
    description: str
    modality: str
    files: tuple[Path, ...]

    def summary(self) -> str:
        text = f"{self.series_uid} ({self.modality}"
        if self.description:
            text += f" {self.description!r}"
        return text + f", {len(self.files)} file{'s' if len(self.files) != 1 else ''})"


@dataclass(frozen=True)
class DicomSeries:
    """A DICOM image series read as a volume; ``files[k]`` holds slice ``k`` (array axis 0) of ``volume``."""

    volume: Volume
    series_uid: str
    description: str
    modality: str
    files: tuple[Path, ...]

    def datasets(self) -> list[Dataset]:
        """The source instances' headers (no pixel data), in slice order: what a SEG writer references."""
        dcmread = _pydicom().dcmread
        return [dcmread(path, stop_before_pixels=True) for path in self.files]


def _header(path: Path) -> Dataset | None:
    """A file's DICOM header, or None for a file that is not DICOM."""
    pydicom = _pydicom()
    try:
        header: Dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        logger.debug("not a DICOM file: %s (%s)", path, exc)
        return None
    return header


def _is_image(header: Dataset | None) -> bool:
    if header is None or "Rows" not in header or "Columns" not in header:
        return False
    return str(header.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """The DICOM image series directly in ``folder`` (not its sub-folders), by series UID; non-image objects and
    non-DICOM files are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"expected a folder holding a DICOM series, got no folder at {folder.name}")
    series_reader = load_sitk().ImageSeriesReader
    found = []
    with _gdcm():
        uids = series_reader.GetGDCMSeriesIDs(str(folder))
        listed = {uid: series_reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in uids}
    for uid, names in listed.items():
        files = tuple(Path(name) for name in names)
        header = _header(files[0]) if files else None
        if not _is_image(header):
            continue
        assert header is not None
        description = str(header.get("SeriesDescription", ""))
        found.append(SeriesInfo(str(uid), description, str(header.get("Modality", "")), files))
    return found


def holds_dicom_series(folder: str | Path) -> bool:
    """True when ``folder``'s own files hold a DICOM image series. A folder of NIfTI, MHA and NRRD files only (or of
    sub-folders only) answers False without GDCM opening anything."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    candidates = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and not is_image_name(p)]
    return bool(candidates) and bool(list_dicom_series(folder))


def choose_series(folder: Path, series: Sequence[SeriesInfo], series_uid: str | None) -> SeriesInfo:
    """The one series to read: the only one, or the one ``series_uid`` names."""
    if not series:
        raise DicomError(f"expected a DICOM image series in {folder.name}, got none")
    listing = "; ".join(s.summary() for s in series[:_FIRST]) + (
        f"; and {len(series) - _FIRST} more" if len(series) > _FIRST else ""
    )
    if series_uid is None:
        if len(series) == 1:
            return series[0]
        raise DicomError(
            f"expected one DICOM image series in {folder.name} or a series UID to choose (--series-uid), "
            f"got {len(series)}: {listing}"
        )
    for info in series:
        if info.series_uid == series_uid:
            return info
    raise DicomError(f"expected a series UID of {folder.name}, one of {listing}; got {series_uid}")


def read_dicom_series(folder: str | Path, series_uid: str | None = None, max_voxels: int | None = None) -> DicomSeries:
    """Read the image series of ``folder`` (the only one, or ``series_uid``) as a float32 volume, rescale slope and
    intercept applied, on the grid of SimpleITK's ``ImageSeriesReader``.

    Raises ``DicomError`` for no series, several series and no ``series_uid``, an unknown UID, uneven or missing
    slices, mixed sizes or orientations; ``VolumeTooLarge`` past ``max_voxels``, before any pixel is decoded.
    """
    folder = Path(folder)
    info = choose_series(folder, list_dicom_series(folder), series_uid)
    headers = [_header(path) for path in info.files]
    check_series_headers(info, headers, max_voxels)
    reader = load_sitk().ImageSeriesReader()
    reader.SetFileNames([str(path) for path in info.files])
    try:
        with _gdcm():
            image = to_3d(reader.Execute(), folder.name)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DicomError(
            f"expected a readable DICOM series, got one SimpleITK cannot read: {last} ({folder.name})"
        ) from exc
    array = load_sitk().GetArrayFromImage(image).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DicomError(f"expected finite intensities, got NaN or infinite voxels in {folder.name}")
    volume = Volume(array=array, geometry=geometry_of(image))
    return DicomSeries(volume, info.series_uid, info.description, info.modality, info.files)


def check_series_headers(info: SeriesInfo, headers: Sequence[Dataset | None], max_voxels: int | None) -> None:
    """Refuse, from the headers alone, what the series reader would misread or what is too large."""
    if any(not _is_image(h) for h in headers):
        raise DicomError(f"expected only image files in series {info.series_uid}, got unreadable or non-image ones")
    images = [h for h in headers if h is not None]
    _check_pixels(info, images)
    voxels = int(images[0].Rows) * int(images[0].Columns) * len(images)
    if max_voxels is not None and voxels > max_voxels:
        raise VolumeTooLarge(f"expected a volume of at most {max_voxels} voxels, got {voxels} in {info.series_uid}")
    _check_spacing(info, images)


def _check_pixels(info: SeriesInfo, headers: Sequence[Dataset]) -> None:
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) != 1:
        raise DicomError(f"expected slices of one size in series {info.series_uid}, got {sorted(sizes)}")
    frames = max(int(h.get("NumberOfFrames", 1) or 1) for h in headers)
    if frames > 1:
        raise DicomError(
            f"expected single-frame images in series {info.series_uid}, got a multi-frame object ({frames} frames)"
        )
    samples = {int(h.get("SamplesPerPixel", 1)) for h in headers}
    if samples != {1}:
        raise DicomError(f"expected a scalar (grey-level) image, got {max(samples)} samples per pixel")
    spacings = {tuple(float(v) for v in h.get("PixelSpacing", [1.0, 1.0])) for h in headers}
    if any(not all(np.isfinite(v) and v > 0 for v in s) for s in spacings):
        raise DicomError(f"expected a positive, finite PixelSpacing, got {sorted(spacings)} in {info.series_uid}")


def _orientation(info: SeriesInfo, headers: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """The slice normal (unit) and each slice's position along it, in file order."""
    if any("ImagePositionPatient" not in h or "ImageOrientationPatient" not in h for h in headers):
        raise DicomError(
            f"expected ImagePositionPatient and ImageOrientationPatient in every slice of {info.series_uid}, "
            "got slices without them"
        )
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise DicomError(f"expected one ImageOrientationPatient for series {info.series_uid}, got several")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        raise DicomError(f"expected two independent ImageOrientationPatient vectors, got {orientations[0].tolist()}")
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers]) @ normal
    return normal, positions


def _check_spacing(info: SeriesInfo, headers: Sequence[Dataset]) -> None:
    """Slices evenly spaced along the normal: else a missing or duplicated slice, named by file and position."""
    if len(headers) < 2:
        return
    _, positions = _orientation(info, headers)
    steps = np.diff(positions)
    magnitudes = np.abs(steps)
    if magnitudes.min() < 1e-3:
        k = int(np.argmin(magnitudes))
        raise DicomError(
            f"expected one slice per position in series {info.series_uid}, got two at {positions[k]:.3f} mm "
            f"along the slice normal ({info.files[k].name} and {info.files[k + 1].name})"
        )
    step = float(np.median(magnitudes)) if len(steps) > 2 else float(magnitudes.min())
    uneven = np.flatnonzero((np.abs(magnitudes - step) > GAP_TOLERANCE * step) | (np.sign(steps) != np.sign(steps[0])))
    if uneven.size:
        gaps = ", ".join(
            f"{magnitudes[k]:.3f} mm between {info.files[k].name} ({positions[k]:.3f} mm) and "
            f"{info.files[k + 1].name} ({positions[k + 1]:.3f} mm)"
            for k in uneven[:_FIRST]
        )
        missing = round(float(magnitudes[uneven].max()) / step) - 1
        hint = f"; about {missing} slice(s) missing" if missing >= 1 else ""
        raise DicomError(
            f"expected evenly spaced slices in series {info.series_uid} (every {step:.3f} mm along the slice "
            f"normal), got a gap of {gaps}{hint}"
        )


_STORAGE_CLASSES: Final = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}
_INT16: Final = 32767
_GAIN_PEAK: Final = 4095.0
"""Largest magnitude of a non-integer volume once stored: a 12-bit range, as MR scanners store."""


def _ds(value: float) -> str:
    """``value`` as a DICOM decimal string: the most significant digits that fit its 16 characters."""
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise DicomError(f"expected a number that fits a DICOM decimal string, got {value!r}")


def _pixels(array: np.ndarray) -> np.ndarray:
    """int16 pixels: integers within int16 as they are; anything else scaled so that its largest magnitude is
    ``_GAIN_PEAK`` and rounded (MR images carry no rescale slope: intensities there are in arbitrary units)."""
    if array.size and np.array_equal(array, np.round(array)) and array.min() >= -_INT16 - 1 and array.max() <= _INT16:
        return array.astype(np.int16)
    peak = float(np.abs(array).max()) if array.size else 0.0
    return np.round(array * (_GAIN_PEAK / peak if peak > 0 else 1.0)).astype(np.int16)


def _axes(volume: Volume) -> np.ndarray:
    """The direction matrix, columns x, y, z; refused unless z = x cross y (the slice normal DICOM readers use)."""
    axes = np.asarray(volume.geometry.direction, dtype=np.float64).reshape(3, 3)
    orthonormal = np.abs(axes.T @ axes - np.eye(3)).max() <= 1e-6
    if not orthonormal or np.abs(np.cross(axes[:, 0], axes[:, 1]) - axes[:, 2]).max() > 1e-6:
        raise DicomError(
            "expected an orthonormal, right-handed direction (z = x cross y, as DICOM slices imply), "
            f"got {volume.geometry.direction}"
        )
    return axes


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    patient_id: str = "MONA-PHANTOM",
    patient_name: str = "MONA^Phantom",
    series_description: str = "MONA phantom",
    modality: str = "MR",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write ``volume`` as a single-frame DICOM series, one file per slice (``0001.dcm``, ... in slice order),
    which ``read_dicom_series`` reads back on the same grid (to the ~1e-12 relative precision of DICOM decimal
    strings). For test data and for exporting phantoms to DICOM viewers.

    Intensities that are integers within int16 are stored as they are; others are scaled to at most 4095 in
    magnitude and rounded (a 12-bit range; MR images have no rescale slope to undo it). The direction must be
    right-handed (z = x cross y); ``modality`` is ``MR`` or ``CT``.
    """
    if modality not in _STORAGE_CLASSES:
        raise DicomError(f"expected a modality in {sorted(_STORAGE_CLASSES)}, got {modality!r}")
    generate_uid = _pydicom().uid.generate_uid
    axes, geometry = _axes(volume), volume.geometry
    pixels = _pixels(volume.array)
    shared = _series_tags(geometry.spacing, axes, modality)
    shared |= {
        "0010|0020": patient_id,
        "0010|0010": patient_name,
        "0008|103e": series_description,
        "0020|000d": study_uid or generate_uid(),
        "0020|000e": series_uid or generate_uid(),
        "0020|0052": generate_uid(),
        "0020|0011": str(series_number),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sitk = load_sitk()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    for k in range(pixels.shape[0]):
        plane = sitk.GetImageFromArray(pixels[k])
        plane.SetSpacing(geometry.spacing[:2])
        position = np.asarray(geometry.origin) + k * geometry.spacing[2] * axes[:, 2]
        tags = shared | {
            "0008|0018": generate_uid(),
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(_ds(float(v)) for v in position),
            "0020|1041": _ds(float(position @ axes[:, 2])),
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        written.append(folder / f"{k + 1:04d}.dcm")
        writer.SetFileName(str(written[-1]))
        with _gdcm():
            writer.Execute(plane)
    return written


def _series_tags(spacing: tuple[float, float, float], axes: np.ndarray, modality: str) -> dict[str, str]:
    """The tags every slice of a written series shares: modality, dates and grid."""
    today = np.datetime64("today").astype(str).replace("-", "")
    return {
        "0008|0016": _STORAGE_CLASSES[modality],
        "0008|0060": modality,
        "0008|0070": "MONA",
        "0008|0020": today,
        "0008|0021": today,
        "0008|0030": "000000",
        "0020|0010": "1",
        "0020|0037": "\\".join(_ds(float(v)) for v in (*axes[:, 0], *axes[:, 1])),
        "0028|0030": f"{_ds(spacing[1])}\\{_ds(spacing[0])}",
        "0018|0050": _ds(spacing[2]),
        "0018|0088": _ds(spacing[2]),
    }
