"""Volume reading and writing with an explicit geometry contract (NIfTI, MHA and NRRD files; see ``formats``).

Arrays are numpy in SimpleITK's index order reversed: a volume of SimpleITK size ``(x, y, z)`` is an array of
shape ``(z, y, x)``. Axis 0 of every array is the slice axis (the NIfTI z axis). ``Geometry`` keeps what is needed
to write a mask back on exactly the grid it came from: size, spacing, origin and direction.

A 2D single slice is accepted and becomes a one-slice volume; 4D images are rejected. The format of a file is chosen
by its suffix (``formats.IMAGE_SUFFIXES``); the module keeps its name because NIfTI is what most callers read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

from mona_core.io.errors import NiftiError
from mona_core.io.formats import load_sitk, read_sitk, write_sitk

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
    """Read an intensity volume (NIfTI, MHA or NRRD, by suffix) as float32; NaN or infinite voxels are rejected.

    ``max_voxels`` bounds the volume by its header (``VolumeTooLarge``) before anything is decoded: set it for
    untrusted uploads.
    """
    path = Path(path)
    image = read_sitk(path, max_voxels)
    array = load_sitk().GetArrayFromImage(image).astype(np.float32, copy=False)
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
    image = read_sitk(path, max_voxels)
    geometry = geometry_of(image)
    if image_geometry is not None and not geometry.matches(image_geometry):
        raise NiftiError(
            f"expected the label on the image grid (size {image_geometry.size}, spacing {image_geometry.spacing}, "
            f"origin {image_geometry.origin}, direction {image_geometry.direction}), got size {geometry.size}, "
            f"spacing {geometry.spacing}, origin {geometry.origin}, direction {geometry.direction}"
        )
    raw = load_sitk().GetArrayFromImage(image)
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
    image = load_sitk().GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write a volume to ``path`` with its exact geometry, in the format of the suffix (``.nii``, ``.nii.gz``,
    ``.mha``, ``.nrrd``); the write is atomic."""
    path = write_sitk(to_sitk(volume.array, volume.geometry), Path(path))
    logger.debug("wrote %s (%s)", path, volume.geometry.size)
    return path


def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write an integer mask (z, y, x) as uint8 on ``geometry``, in the format of ``path``'s suffix."""
    return write_volume(Volume(array=mask.astype(np.uint8, copy=False), geometry=geometry), path)
