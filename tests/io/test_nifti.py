"""NIfTI I/O: exact geometry round trips and clear errors for every kind of bad file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mona_core.data.phantoms import make_phantom
from mona_core.io.nifti import (
    Geometry,
    NiftiError,
    Volume,
    read_image,
    read_label,
    write_mask,
    write_volume,
)

SHAPE = (4, 20, 24)


@pytest.fixture
def pair() -> tuple[Volume, Volume]:
    """A small oblique, anisotropic image / label pair with a non-zero origin."""
    return make_phantom(3, shape=SHAPE, spacing=(0.7, 0.9, 6.5))


def _assert_same_grid(written: Geometry, read: Geometry) -> None:
    # NIfTI stores spacing, origin and direction as float32: equal to ~1e-6 (exact when float32 holds them).
    assert read.size == written.size
    assert np.allclose(read.spacing, written.spacing, rtol=1e-6, atol=0.0)
    assert np.allclose(read.origin, written.origin, rtol=0.0, atol=1e-5)
    assert np.allclose(read.direction, written.direction, rtol=0.0, atol=1e-6)
    assert read.matches(written)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_round_trip_keeps_geometry_and_voxels(tmp_path: Path, pair: tuple[Volume, Volume], suffix: str) -> None:
    image, label = pair
    read = read_image(write_volume(image, tmp_path / f"image{suffix}"))
    _assert_same_grid(image.geometry, read.geometry)
    assert read.array.dtype == np.float32 and np.array_equal(read.array, image.array)
    read_back = read_label(write_volume(label, tmp_path / f"label{suffix}"), read.geometry, num_classes=4)
    assert read_back.array.dtype == np.uint8 and np.array_equal(read_back.array, label.array)


def test_write_mask_writes_uint8_on_the_given_grid(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    image, label = pair
    path = write_mask(label.array.astype(np.int64), image.geometry, tmp_path / "mask.nii.gz")
    raw = sitk.ReadImage(str(path))
    assert raw.GetPixelID() == sitk.sitkUInt8
    assert raw.GetSize() == image.geometry.size
    assert np.allclose(raw.GetSpacing(), image.geometry.spacing, rtol=1e-6, atol=0.0)
    assert np.array_equal(sitk.GetArrayFromImage(raw), label.array)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    with pytest.raises(NiftiError, match="expected an array of shape"):
        write_mask(label.array[:2], image.geometry, tmp_path / "bad.nii.gz")
    with pytest.raises(NiftiError, match=r"expected an output name ending in \.nii"):
        write_mask(label.array, image.geometry, tmp_path / "mask.png")


def test_non_nifti_names_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(NiftiError, match=r"expected a \.nii, \.nii\.gz, \.mha or \.nrrd file, got scan\.png"):
        read_image(tmp_path / "scan.png")
    with pytest.raises(NiftiError, match="got no file"):
        read_image(tmp_path / "missing.nii.gz")


def test_text_renamed_to_nifti(tmp_path: Path) -> None:
    (tmp_path / "notes.nii.gz").write_text("patient notes, not an image\n")
    with pytest.raises(NiftiError, match="expected a complete NIfTI file, got a broken one"):
        read_image(tmp_path / "notes.nii.gz")
    (tmp_path / "notes.nii").write_text("patient notes, not an image\n")
    with pytest.raises(NiftiError, match="expected a NIfTI-1 or NIfTI-2 header"):
        read_image(tmp_path / "notes.nii")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(NiftiError, match="got an empty file"):
        read_image(tmp_path / "empty.nii.gz")


def test_truncated_gzip(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    data = write_volume(pair[0], tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(NiftiError, match=r"got a broken one|truncated"):
        read_image(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_voxel_data(tmp_path: Path, pair: tuple[Volume, Volume], suffix: str) -> None:
    data = write_volume(pair[0], tmp_path / "full.nii").read_bytes()
    cut = data[: len(data) // 2]
    (tmp_path / f"cut{suffix}").write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    with pytest.raises(NiftiError):
        read_image(tmp_path / f"cut{suffix}")


def test_4d_image_is_rejected(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    frame = sitk.GetImageFromArray(pair[0].array)
    sitk.WriteImage(sitk.JoinSeries([frame, frame, frame]), str(tmp_path / "cine.nii.gz"))
    with pytest.raises(NiftiError, match=r"expected a 3D volume \(or a 2D slice\), got a 4D image"):
        read_image(tmp_path / "cine.nii.gz")


def test_4d_image_with_one_frame_is_3d(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    frame = sitk.GetImageFromArray(pair[0].array)
    sitk.WriteImage(sitk.JoinSeries([frame]), str(tmp_path / "one.nii.gz"))
    volume = read_image(tmp_path / "one.nii.gz")
    assert volume.array.shape == SHAPE and np.array_equal(volume.array, pair[0].array)


def test_2d_slice_is_a_one_slice_volume(tmp_path: Path) -> None:
    plane = np.arange(30, dtype=np.float32).reshape(5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(plane), str(tmp_path / "slice.nii.gz"))
    volume = read_image(tmp_path / "slice.nii.gz")
    assert volume.array.shape == (1, 5, 6) and volume.geometry.size == (6, 5, 1)
    assert np.array_equal(volume.array[0], plane)


def test_label_on_another_grid_is_rejected(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    image, label = pair
    path = write_volume(label, tmp_path / "label.nii.gz")
    shifted = Geometry(image.geometry.size, image.geometry.spacing, (0.0, 0.0, 0.0), image.geometry.direction)
    with pytest.raises(NiftiError, match="expected the label on the image grid"):
        read_label(path, shifted)
    other, _ = make_phantom(3, shape=(4, 20, 26))
    with pytest.raises(NiftiError, match="expected the label on the image grid"):
        read_label(path, other.geometry)


def test_fractional_labels_are_rejected(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    image = pair[0]
    values = np.zeros(SHAPE, dtype=np.float32)
    values[0, 0, 0] = 1.5
    path = write_volume(Volume(values, image.geometry), tmp_path / "soft.nii.gz")
    with pytest.raises(NiftiError, match="expected integer labels, got fractional values"):
        read_label(path)


def test_labels_out_of_range_are_rejected(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    label = pair[1].array.copy()
    label[0, 0, 0] = 7
    path = write_mask(label, pair[1].geometry, tmp_path / "seven.nii.gz")
    with pytest.raises(NiftiError, match=r"expected labels in 0\.\.3, got values in 0\.\.7"):
        read_label(path, num_classes=4)
    assert read_label(path).array.max() == 7


def test_negative_labels_are_rejected(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    values = pair[1].array.astype(np.int16)
    values[0, 0, 0] = -1
    path = write_volume(Volume(values, pair[1].geometry), tmp_path / "negative.nii.gz")
    with pytest.raises(NiftiError, match=r"expected labels in 0\.\.255, got values in -1\.\.3"):
        read_label(path)


def test_float32_exact_geometry_round_trips_exactly(tmp_path: Path) -> None:
    image, _ = make_phantom(5, shape=SHAPE, spacing=(1.5, 1.25, 8.0), oblique=False)
    read = read_image(write_volume(image, tmp_path / "exact.nii.gz"))
    assert read.geometry.size == image.geometry.size and read.geometry.spacing == (1.5, 1.25, 8.0)
    assert read.geometry.direction == image.geometry.direction


def test_nan_intensities_are_rejected(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    values = pair[0].array.copy()
    values[1, 2, 3] = np.nan
    path = write_volume(Volume(values, pair[0].geometry), tmp_path / "nan.nii.gz")
    with pytest.raises(NiftiError, match="expected finite intensities, got 1 NaN or infinite voxels"):
        read_image(path)


def test_volume_rejects_an_array_off_its_grid(pair: tuple[Volume, Volume]) -> None:
    with pytest.raises(NiftiError, match="expected an array of shape"):
        Volume(np.zeros((2, 2, 2), np.float32), pair[0].geometry)


def test_geometry_dict_round_trip(pair: tuple[Volume, Volume]) -> None:
    geometry = pair[0].geometry
    assert Geometry.from_dict(geometry.to_dict()) == geometry
    assert geometry.shape == SHAPE


def test_max_voxels_is_checked_from_the_header(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    from mona_core.io import VolumeTooLarge

    path = write_volume(pair[0], tmp_path / "scan.nii.gz")
    voxels = int(np.prod(SHAPE))
    assert read_image(path, max_voxels=voxels).array.shape == SHAPE
    with pytest.raises(VolumeTooLarge, match=f"expected a volume of at most {voxels - 1} voxels, got {voxels}"):
        read_image(path, max_voxels=voxels - 1)


def test_a_stream_inflating_past_its_header_is_a_bomb(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    raw = write_volume(pair[0], tmp_path / "scan.nii").read_bytes()
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(raw + bytes(4 << 20)))
    with pytest.raises(NiftiError, match="gzip bomb"):
        read_image(tmp_path / "bomb.nii.gz")
