"""NIfTI reading and writing with an explicit geometry contract.

Arrays are numpy in SimpleITK's index order reversed: a volume of SimpleITK size ``(x, y, z)`` is an array of
shape ``(z, y, x)``. Axis 0 of every array is the slice axis (the NIfTI z axis). ``Geometry`` keeps what is needed
to write a mask back on exactly the grid it came from: size, spacing, origin and direction.

A 2D single slice is accepted and becomes a one-slice volume; 4D images are rejected.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

from mona_core.io.errors import NiftiError
from mona_core.io.payload import check_payload


def _sitk() -> ModuleType:
    """SimpleITK, imported on first use: code that only trains on slices already in memory never needs it."""
    return importlib.import_module("SimpleITK")


logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Geometry:
    """Physical grid of a volume, in SimpleITK (x, y, z) order.

    ``direction`` is the row-major 3x3 direction cosine matrix, nine floats.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy shape ``(z, y, x)`` of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    def matches(self, other: Geometry, tolerance: float = 1e-4) -> bool:
        """True when both grids have the same size and, within ``tolerance``, spacing, origin and direction."""
        if self.size != other.size:
            return False
        pairs = (
            (self.spacing, other.spacing),
            (self.origin, other.origin),
            (self.direction, other.direction),
        )
        return all(np.allclose(a, b, atol=tolerance, rtol=0.0) for a, b in pairs)

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, list[float] | list[int]]) -> Geometry:
        size = tuple(int(v) for v in data["size"])
        spacing = tuple(float(v) for v in data["spacing"])
        origin = tuple(float(v) for v in data["origin"])
        return cls(
            size=(size[0], size[1], size[2]),
            spacing=(spacing[0], spacing[1], spacing[2]),
            origin=(origin[0], origin[1], origin[2]),
            direction=tuple(float(v) for v in data["direction"]),
        )


@dataclass(frozen=True)
class Volume:
    """A 3D array ``(z, y, x)`` with the grid it lives on."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.array.shape != self.geometry.shape:
            raise NiftiError(
                f"expected an array of shape {self.geometry.shape} for size {self.geometry.size}, "
                f"got {self.array.shape}"
            )


def is_nifti_name(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_readable(path: Path, max_voxels: int | None = None) -> None:
    if not path.is_file():
        raise NiftiError(f"expected a NIfTI file, got no file at {path.name}")
    if not is_nifti_name(path):
        raise NiftiError(f"expected a .nii or .nii.gz file, got {path.name}")
    if path.stat().st_size == 0:
        raise NiftiError(f"expected a NIfTI file, got an empty file ({path.name})")
    check_payload(path, max_voxels)


def _to_3d(image: sitk.Image, name: str) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 3:
        return image
    if dim == 2:
        return _sitk().JoinSeries(image)
    if dim == 4 and image.GetSize()[3] == 1:
        return image[:, :, :, 0]
    raise NiftiError(f"expected a 3D volume (or a 2D slice), got a {dim}D image of size {image.GetSize()} ({name})")


def _read_sitk(path: Path, max_voxels: int | None = None) -> sitk.Image:
    _check_readable(path, max_voxels)
    reader = _sitk().ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        last_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise NiftiError(f"expected a readable NIfTI file, got one SimpleITK cannot read: {last_line}") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise NiftiError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    return _to_3d(image, path.name)


def geometry_of(image: sitk.Image) -> Geometry:
    size = image.GetSize()
    spacing = image.GetSpacing()
    origin = image.GetOrigin()
    return Geometry(
        size=(int(size[0]), int(size[1]), int(size[2])),
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in image.GetDirection()),
    )


def read_image(path: str | Path, max_voxels: int | None = None) -> Volume:
    """Read an intensity volume as float32; NaN or infinite voxels are rejected.

    ``max_voxels`` bounds the volume by its header (``VolumeTooLarge``) before anything is decoded: set it for
    untrusted uploads.
    """
    path = Path(path)
    image = _read_sitk(path, max_voxels)
    array = _sitk().GetArrayFromImage(image).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise NiftiError(f"expected finite intensities, got {bad} NaN or infinite voxels in {path.name}")
    return Volume(array=array, geometry=geometry_of(image))


def read_label(
    path: str | Path,
    image_geometry: Geometry | None = None,
    num_classes: int | None = None,
    max_voxels: int | None = None,
) -> Volume:
    """Read a label map as uint8 with values in ``0..num_classes-1`` (0 = background).

    When ``image_geometry`` is given the label must lie on exactly that grid; ``max_voxels`` as in ``read_image``.
    """
    path = Path(path)
    image = _read_sitk(path, max_voxels)
    geometry = geometry_of(image)
    if image_geometry is not None and not geometry.matches(image_geometry):
        raise NiftiError(
            f"expected the label on the image grid (size {image_geometry.size}, spacing {image_geometry.spacing}, "
            f"origin {image_geometry.origin}, direction {image_geometry.direction}), got size {geometry.size}, "
            f"spacing {geometry.spacing}, origin {geometry.origin}, direction {geometry.direction}"
        )
    raw = _sitk().GetArrayFromImage(image)
    return Volume(array=validate_label_array(raw, num_classes, path.name), geometry=geometry)


def validate_label_array(raw: np.ndarray, num_classes: int | None, name: str = "label") -> np.ndarray:
    """Check that a label array holds non-negative integers below ``num_classes``; return it as uint8."""
    if not np.isfinite(raw).all():
        raise NiftiError(f"expected integer labels, got NaN or infinite values in {name}")
    if not np.array_equal(raw, np.round(raw)):
        raise NiftiError(f"expected integer labels, got fractional values in {name}")
    low, high = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    limit = (num_classes - 1) if num_classes is not None else 255
    if low < 0 or high > limit:
        raise NiftiError(f"expected labels in 0..{limit}, got values in {low}..{high} in {name}")
    return raw.astype(np.uint8)


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """An image with ``array`` (z, y, x) as voxels on ``geometry``."""
    if array.shape != geometry.shape:
        raise NiftiError(f"expected an array of shape {geometry.shape}, got {array.shape}")
    image = _sitk().GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write a volume to ``path`` (``.nii`` or ``.nii.gz``) with its exact geometry; the write is atomic."""
    path = Path(path)
    if not is_nifti_name(path):
        raise NiftiError(f"expected an output name ending in .nii or .nii.gz, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    partial = path.with_name(f".{path.name}.partial{suffix}")
    _sitk().WriteImage(to_sitk(volume.array, volume.geometry), str(partial), useCompression=suffix == ".nii.gz")
    partial.replace(path)
    logger.debug("wrote %s (%s)", path, volume.geometry.size)
    return path


def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write an integer mask (z, y, x) as uint8 on ``geometry``."""
    return write_volume(Volume(array=mask.astype(np.uint8, copy=False), geometry=geometry), path)
