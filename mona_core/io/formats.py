"""The single-file volume formats: which suffixes are recognised, and reading / writing one with SimpleITK.

NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mha``) and NRRD (``.nrrd``). The format is chosen by the file name, never
guessed from the bytes, and SimpleITK is told which reader to use, so a file named ``.mha`` is read as a MetaImage or
refused. Before any voxel is decoded the header is checked: a NIfTI file by ``payload.check_payload`` (ITK would hide
its problems), an MHA or NRRD file by SimpleITK's ``ReadImageInformation`` (size, pixel type, spacing, direction).
Every file is then held to the same rules: one scalar, real-valued component per voxel, 3D (a 2D slice becomes a
one-slice volume), a positive finite spacing, at most ``max_voxels`` voxels.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final

import numpy as np

from mona_core.io.errors import NiftiError, VolumeTooLarge
from mona_core.io.payload import check_payload

if TYPE_CHECKING:
    import SimpleITK as sitk

IMAGE_SUFFIXES: Final = (".nii.gz", ".nii", ".mha", ".nrrd")
"""The file name endings read and written, longest first (``.nii.gz`` before ``.nii``); compared in lower case."""

_IMAGE_IO: Final = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mha": "MetaImageIO", ".nrrd": "NrrdImageIO"}
_FORMAT: Final = {".nii.gz": "NIfTI", ".nii": "NIfTI", ".mha": "MHA", ".nrrd": "NRRD"}
_COMPRESSED: Final = {".nii.gz": True, ".nii": False, ".mha": True, ".nrrd": True}
SUFFIX_TEXT: Final = ".nii, .nii.gz, .mha or .nrrd"


def load_sitk() -> ModuleType:
    """SimpleITK, imported on first use: code that only trains on slices already in memory never needs it."""
    return importlib.import_module("SimpleITK")


def image_suffix(name: str | Path) -> str | None:
    """The recognised suffix of a file name in lower case (``".nii.gz"``, ``".nii"``, ``".mha"``, ``".nrrd"``), or
    None. Only the name counts: ``scan.NII.GZ`` gives ``".nii.gz"``, a folder part is ignored."""
    lowered = Path(name).name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if lowered.endswith(suffix) and lowered != suffix), None)


def is_image_name(name: str | Path) -> bool:
    """True when ``name`` ends in one of ``IMAGE_SUFFIXES``."""
    return image_suffix(name) is not None


def strip_image_suffix(name: str | Path) -> str:
    """The file name without its recognised suffix (``case_01.nii.gz`` -> ``case_01``); other names unchanged."""
    base = Path(name).name
    suffix = image_suffix(base)
    return base[: -len(suffix)] if suffix else base


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else "unknown error"


def _suffix_of(path: Path) -> str:
    suffix = image_suffix(path)
    if suffix is None:
        raise NiftiError(f"expected a {SUFFIX_TEXT} file, got {path.name}")
    return suffix


def check_readable(path: Path, max_voxels: int | None = None) -> str:
    """Check a file's name, presence and header before any voxel is decoded; return its suffix.

    Raises ``NiftiError`` for what cannot be read as a volume and ``VolumeTooLarge`` past ``max_voxels``.
    """
    suffix = _suffix_of(path)
    if not path.is_file():
        raise NiftiError(f"expected a {_FORMAT[suffix]} file, got no file at {path.name}")
    if path.stat().st_size == 0:
        raise NiftiError(f"expected a {_FORMAT[suffix]} file, got an empty file ({path.name})")
    if _IMAGE_IO[suffix] == "NiftiImageIO":
        check_payload(path, max_voxels)
    else:
        check_header_information(_reader(path, suffix), path.name, max_voxels)
    return suffix


def _reader(path: Path, suffix: str) -> sitk.ImageFileReader:
    reader = load_sitk().ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[suffix])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NiftiError(
            f"expected a readable {_FORMAT[suffix]} file, got one SimpleITK cannot read: {_last_line(exc)} "
            f"({path.name})"
        ) from exc
    return reader


def check_header_information(info: sitk.ImageFileReader, name: str, max_voxels: int | None) -> None:
    """The NIfTI payload rules on a header SimpleITK has read: scalar, real, a positive finite spacing, an
    invertible direction, at most ``max_voxels`` voxels. ``name`` goes into the messages."""
    sitk_module = load_sitk()
    pixel = info.GetPixelID()
    if pixel in (sitk_module.sitkComplexFloat32, sitk_module.sitkComplexFloat64):
        kind_text = sitk_module.GetPixelIDValueAsString(pixel)
        raise NiftiError(f"expected real-valued voxels, got complex ones ({kind_text}) in {name}")
    if info.GetNumberOfComponents() != 1:
        raise NiftiError(f"expected a scalar image, got {info.GetNumberOfComponents()} components per voxel in {name}")
    spacing = tuple(float(v) for v in info.GetSpacing())
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise NiftiError(f"expected a positive, finite voxel spacing, got {spacing} in {name}")
    dim = info.GetDimension()
    direction = np.asarray(info.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if not np.isfinite(direction).all() or abs(float(np.linalg.det(direction))) < 1e-6:
        raise NiftiError(f"expected an invertible direction matrix, got {tuple(direction.ravel())} in {name}")
    voxels = int(np.prod([int(v) for v in info.GetSize()], dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        raise VolumeTooLarge(f"expected a volume of at most {max_voxels} voxels, got {voxels} in {name}")


def to_3d(image: sitk.Image, name: str) -> sitk.Image:
    """A 3D image: a 2D slice becomes one slice, a 4D image with one frame loses the frame axis."""
    dim = image.GetDimension()
    if dim == 3:
        return image
    if dim == 2:
        return load_sitk().JoinSeries(image)
    if dim == 4 and image.GetSize()[3] == 1:
        return image[:, :, :, 0]
    raise NiftiError(f"expected a 3D volume (or a 2D slice), got a {dim}D image of size {image.GetSize()} ({name})")


def read_sitk(path: Path, max_voxels: int | None = None) -> sitk.Image:
    """A checked 3D scalar SimpleITK image from a NIfTI, MHA or NRRD file (format by suffix)."""
    suffix = check_readable(path, max_voxels)
    reader = load_sitk().ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[suffix])
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise NiftiError(
            f"expected a readable {_FORMAT[suffix]} file, got one SimpleITK cannot read: {_last_line(exc)} "
            f"({path.name})"
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise NiftiError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    return to_3d(image, path.name)


def write_sitk(image: sitk.Image, path: Path) -> Path:
    """Write ``image`` in the format of ``path``'s suffix (compressed where the format allows); the write is
    atomic: a partial file is renamed into place."""
    suffix = image_suffix(path)
    if suffix is None:
        raise NiftiError(f"expected an output name ending in {SUFFIX_TEXT}, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{suffix}")
    writer = load_sitk().ImageFileWriter()
    writer.SetImageIO(_IMAGE_IO[suffix])
    writer.SetFileName(str(partial))
    writer.SetUseCompression(_COMPRESSED[suffix])
    writer.Execute(image)
    partial.replace(path)
    return path
