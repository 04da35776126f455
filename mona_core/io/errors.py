"""The error types of the I/O stage."""


class NiftiError(ValueError):
    """A file is not a usable volume (NIfTI, MHA, NRRD or DICOM); the message says what was expected and what was
    found. The name stays for the callers that catch it: every input error of the I/O stage is one."""


class VolumeTooLarge(NiftiError):
    """A volume larger than the caller's voxel limit, found from the header before any voxel is decoded."""


class DicomError(NiftiError):
    """A folder does not hold one usable DICOM image series, or a segmentation cannot be written against it."""
