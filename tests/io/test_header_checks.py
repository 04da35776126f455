"""Header checks before any voxel is decoded: complex voxels and a zero, negative or non-finite spacing (pixdim) are
refused with a ``NiftiError`` naming the file (SimpleITK would read them as real values and a spacing of 1.0)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mona_core.io import NiftiError, read_image

NIFTI_CLASSES = (nib.Nifti1Image, nib.Nifti2Image)


def _write(path: Path, array: np.ndarray, pixdim: tuple[float, float, float], nifti2: bool = False) -> Path:
    """A NIfTI file with exactly ``pixdim`` in its header (no affine: nibabel keeps the header's values)."""
    image = NIFTI_CLASSES[nifti2](array, None)  # type: ignore[no-untyped-call]
    image.header["pixdim"][1:4] = pixdim
    nib.save(image, path)
    return path


@pytest.mark.parametrize("nifti2", [False, True])
def test_complex_voxels_are_refused(tmp_path: Path, nifti2: bool) -> None:
    path = _write(tmp_path / "complex.nii.gz", np.ones((8, 8, 4), np.complex64), (1.0, 1.0, 1.0), nifti2)
    with pytest.raises(NiftiError, match=r"expected real-valued voxels, got complex ones \(complex64.*complex\.nii"):
        read_image(path)


@pytest.mark.parametrize("bad", [0.0, -1.5, float("nan"), float("inf")])
@pytest.mark.parametrize("nifti2", [False, True])
def test_zero_negative_or_non_finite_spacing_is_refused(tmp_path: Path, bad: float, nifti2: bool) -> None:
    path = _write(tmp_path / "spacing.nii", np.ones((8, 8, 4), np.float32), (1.0, bad, 2.0), nifti2)
    with pytest.raises(NiftiError, match=r"expected a positive, finite voxel spacing \(pixdim\), got .* spacing\.nii"):
        read_image(path)


def test_a_good_spacing_is_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / "good.nii.gz", np.ones((8, 8, 4), np.float32), (0.5, 1.5, 2.0))
    assert read_image(path).geometry.spacing == (0.5, 1.5, 2.0)
