"""Scans in and masks out, geometry kept (SimpleITK): NIfTI, MHA, NRRD, DICOM series in; DICOM SEG out.

pydicom and highdicom are imported on first use, so importing this package stays as light as it was.
"""

from mona_core.io.dicom import (
    DicomSeries,
    SeriesInfo,
    holds_dicom_series,
    list_dicom_series,
    read_dicom_series,
    write_dicom_series,
)
from mona_core.io.dicom_seg import write_dicom_seg
from mona_core.io.errors import DicomError, NiftiError, VolumeTooLarge
from mona_core.io.formats import IMAGE_SUFFIXES, image_suffix, is_image_name, strip_image_suffix
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
from mona_core.io.scans import Scan, ScanInput, find_scans, read_scan

__all__ = [
    "IMAGE_SUFFIXES",
    "DicomError",
    "DicomSeries",
    "Geometry",
    "NiftiError",
    "Scan",
    "ScanInput",
    "SeriesInfo",
    "Volume",
    "VolumeTooLarge",
    "find_scans",
    "holds_dicom_series",
    "image_suffix",
    "is_image_name",
    "is_nifti_name",
    "list_dicom_series",
    "read_dicom_series",
    "read_image",
    "read_label",
    "read_scan",
    "strip_image_suffix",
    "validate_label_array",
    "write_dicom_seg",
    "write_dicom_series",
    "write_mask",
    "write_volume",
]
