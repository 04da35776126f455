"""The one error type of the I/O stage."""


class NiftiError(ValueError):
    """A file is not a usable NIfTI volume; the message says what was expected and what was found."""
