"""The one error type of the I/O stage."""


class NiftiError(ValueError):
    """A file is not a usable NIfTI volume; the message says what was expected and what was found."""


class VolumeTooLarge(NiftiError):
    """A volume larger than the caller's voxel limit, found from the header before any voxel is decoded."""
