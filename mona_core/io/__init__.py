"""NIfTI in and out, geometry kept (SimpleITK)."""

from mona_core.io.errors import NiftiError, VolumeTooLarge
from mona_core.io.nifti import (
    Geometry,
    Volume,
    is_nifti_name,
    read_image,
    read_label,
    validate_label_array,
    write_mask,
    write_volume,
)

__all__ = [
    "Geometry",
    "NiftiError",
    "Volume",
    "VolumeTooLarge",
    "is_nifti_name",
    "read_image",
    "read_label",
    "validate_label_array",
    "write_mask",
    "write_volume",
]
