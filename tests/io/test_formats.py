"""MHA and NRRD beside NIfTI: suffixes, exact geometry round trips, and the same refusals as for NIfTI files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mona_core.data.phantoms import make_phantom
from mona_core.io import (
    IMAGE_SUFFIXES,
    Geometry,
    NiftiError,
    Volume,
    VolumeTooLarge,
    image_suffix,
    read_image,
    read_label,
    strip_image_suffix,
    write_mask,
    write_volume,
)

SHAPE = (5, 20, 24)
FORMATS = [".mha", ".nrrd"]


@pytest.fixture
def pair() -> tuple[Volume, Volume]:
    """A small oblique, anisotropic phantom (image, label) with a non-zero origin."""
    return make_phantom(5, shape=SHAPE, spacing=(0.7, 0.9, 6.5))


def _raw_header(path: Path) -> bytes:
    data = path.read_bytes()
    return data.split(b"\n\n", 1)[0] if data.startswith(b"NRRD") else data.split(b"ElementDataFile", 1)[0]


def test_suffixes_are_recognised_by_name_only() -> None:
    assert IMAGE_SUFFIXES == (".nii.gz", ".nii", ".mha", ".nrrd")
    cases = {
        "scan.nii.gz": ".nii.gz",
        "SCAN.NII.GZ": ".nii.gz",
        "dir.mha/scan.nii": ".nii",
        "a.b.mha": ".mha",
        "x.NRRD": ".nrrd",
        "x.gz": None,
        "x.png": None,
        ".nii.gz": None,
        "mask": None,
    }
    assert {name: image_suffix(name) for name in cases} == cases
    assert [strip_image_suffix(n) for n in ("case_01.nii.gz", "ct.mha", "a.b.nrrd", "notes.txt")] == [
        "case_01",
        "ct",
        "a.b",
        "notes.txt",
    ]


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_keeps_exact_geometry_and_voxels(tmp_path: Path, pair: tuple[Volume, Volume], suffix: str) -> None:
    image, label = pair
    read = read_image(write_volume(image, tmp_path / f"image{suffix}"))
    assert read.geometry.size == image.geometry.size
    for got, want in ((read.geometry.spacing, image.geometry.spacing), (read.geometry.origin, image.geometry.origin)):
        np.testing.assert_allclose(got, want, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(read.geometry.direction, image.geometry.direction, rtol=0.0, atol=1e-12)
    assert read.array.dtype == np.float32 and np.array_equal(read.array, image.array)
    back = read_label(write_volume(label, tmp_path / f"label{suffix}"), read.geometry, num_classes=4)
    assert back.array.dtype == np.uint8 and np.array_equal(back.array, label.array)


@pytest.mark.parametrize(
    ("name", "magic"),
    [("m.nii.gz", b"\x1f\x8b"), ("m.nii", b"\x5c\x01\x00\x00"), ("m.mha", b"ObjectType"), ("m.nrrd", b"NRRD")],
)
def test_write_mask_writes_the_format_of_the_extension(
    tmp_path: Path, pair: tuple[Volume, Volume], name: str, magic: bytes
) -> None:
    image, label = pair
    path = write_mask(label.array.astype(np.int32), image.geometry, tmp_path / name)
    assert path.read_bytes().startswith(magic)
    raw = sitk.ReadImage(str(path))
    assert raw.GetPixelID() == sitk.sitkUInt8 and np.array_equal(sitk.GetArrayFromImage(raw), label.array)
    assert read_label(path).geometry.matches(image.geometry)  # NIfTI keeps float32: equal to ~1e-7
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_write_refuses_an_unknown_extension(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    with pytest.raises(NiftiError, match=r"expected an output name ending in \.nii, \.nii\.gz, \.mha or \.nrrd"):
        write_mask(pair[1].array, pair[1].geometry, tmp_path / "mask.png")


@pytest.mark.parametrize("suffix", FORMATS)
def test_complex_and_vector_voxels_are_refused(tmp_path: Path, suffix: str) -> None:
    array = np.ones((3, 8, 8), np.float32)
    sitk.WriteImage(sitk.GetImageFromArray((array + 1j * array).astype(np.complex64)), str(tmp_path / f"c{suffix}"))
    with pytest.raises(NiftiError, match=r"expected real-valued voxels, got complex|expected a scalar image, got 2"):
        read_image(tmp_path / f"c{suffix}")
    vector = sitk.GetImageFromArray(np.ones((3, 8, 8, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / f"v{suffix}"))
    with pytest.raises(NiftiError, match="expected a scalar image, got 3 components per voxel"):
        read_image(tmp_path / f"v{suffix}")


def test_nrrd_complex_is_named_complex(tmp_path: Path) -> None:
    array = np.ones((3, 8, 8), np.float32)
    sitk.WriteImage(sitk.GetImageFromArray((array + 1j * array).astype(np.complex64)), str(tmp_path / "c.nrrd"))
    with pytest.raises(NiftiError, match=r"expected real-valued voxels, got complex ones .* in c\.nrrd"):
        read_image(tmp_path / "c.nrrd")


@pytest.mark.parametrize("bad", [b"0", b"-1.5", b"nan", b"inf"])
def test_mha_zero_negative_or_non_finite_spacing_is_refused(tmp_path: Path, bad: bytes) -> None:
    good = write_volume(Volume(np.ones((3, 8, 8), np.float32), _axial((0.5, 0.7, 2.0))), tmp_path / "good.mha")
    data = good.read_bytes()
    (tmp_path / "bad.mha").write_bytes(data.replace(b"ElementSpacing = 0.5", b"ElementSpacing = " + bad, 1))
    with pytest.raises(NiftiError, match=r"expected a positive, finite voxel spacing, got .* in bad\.mha"):
        read_image(tmp_path / "bad.mha")


def test_nrrd_zero_spacing_is_refused(tmp_path: Path) -> None:
    header = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 8 8 3\nspacings: 0 1 1\nendian: little\nencoding: raw\n\n"
    (tmp_path / "bad.nrrd").write_bytes(header + np.ones(192, np.float32).tobytes())
    with pytest.raises(NiftiError, match=r"expected a readable NRRD file, got one SimpleITK cannot read: .*spacing"):
        read_image(tmp_path / "bad.nrrd")


@pytest.mark.parametrize("suffix", FORMATS)
def test_non_finite_intensities_are_refused(tmp_path: Path, suffix: str) -> None:
    array = np.ones((3, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 3] = np.inf
    path = write_volume(Volume(array, _axial((1.0, 1.0, 1.0))), tmp_path / f"nan{suffix}")
    with pytest.raises(NiftiError, match="expected finite intensities, got 2 NaN or infinite voxels"):
        read_image(path)
    with pytest.raises(NiftiError, match="expected integer labels, got NaN or infinite values"):
        read_label(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_max_voxels_is_checked_from_the_header_alone(tmp_path: Path, suffix: str) -> None:
    path = write_volume(Volume(np.ones((3, 8, 8), np.float32), _axial((1.0, 1.0, 1.0))), tmp_path / f"v{suffix}")
    with pytest.raises(VolumeTooLarge, match=r"expected a volume of at most 100 voxels, got 192"):
        read_image(path, max_voxels=100)
    assert read_image(path, max_voxels=192).array.shape == (3, 8, 8)
    # A header announcing 10^12 voxels over 768 bytes of data: refused before any voxel is read.
    huge = _raw_header(path).replace(b"8 8 3", b"10000 10000 10000")
    assert huge != _raw_header(path)
    (tmp_path / f"huge{suffix}").write_bytes(path.read_bytes().replace(_raw_header(path), huge, 1))
    with pytest.raises(VolumeTooLarge, match=r"got 1000000000000 in huge"):
        read_image(tmp_path / f"huge{suffix}", max_voxels=10**8)


@pytest.mark.parametrize("suffix", FORMATS)
def test_text_truncated_and_empty_files_are_clear_errors(tmp_path: Path, suffix: str) -> None:
    name = {".mha": "MHA", ".nrrd": "NRRD"}[suffix]
    (tmp_path / f"notes{suffix}").write_text("patient notes, not an image\n")
    with pytest.raises(NiftiError, match=rf"expected a readable {name} file, got one SimpleITK cannot read"):
        read_image(tmp_path / f"notes{suffix}")
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    with pytest.raises(NiftiError, match=rf"expected a {name} file, got an empty file"):
        read_image(tmp_path / f"empty{suffix}")
    with pytest.raises(NiftiError, match=rf"expected a {name} file, got no file at missing{suffix}"):
        read_image(tmp_path / f"missing{suffix}")
    full = write_volume(Volume(np.ones((3, 8, 8), np.float32), _axial((1.0, 1.0, 1.0))), tmp_path / f"f{suffix}")
    sitk.WriteImage(sitk.ReadImage(str(full)), str(tmp_path / f"raw{suffix}"), useCompression=False)
    data = (tmp_path / f"raw{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) - 100])
    with pytest.raises(NiftiError, match=rf"expected a readable {name} file"):
        read_image(tmp_path / f"cut{suffix}")


@pytest.mark.parametrize("suffix", FORMATS)
def test_2d_is_one_slice_and_4d_is_refused(tmp_path: Path, suffix: str) -> None:
    plane = np.arange(30, dtype=np.float32).reshape(5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(plane), str(tmp_path / f"slice{suffix}"))
    volume = read_image(tmp_path / f"slice{suffix}")
    assert volume.array.shape == (1, 5, 6) and np.array_equal(volume.array[0], plane)
    frame = sitk.GetImageFromArray(np.zeros((3, 5, 6), np.float32))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(tmp_path / f"cine{suffix}"))
    with pytest.raises(NiftiError, match=r"expected a 3D volume \(or a 2D slice\), got a 4D image"):
        read_image(tmp_path / f"cine{suffix}")


def test_gzip_named_mha_is_not_read_as_nifti(tmp_path: Path, pair: tuple[Volume, Volume]) -> None:
    nifti = write_volume(pair[0], tmp_path / "scan.nii.gz")
    (tmp_path / "scan.mha").write_bytes(nifti.read_bytes())
    with pytest.raises(NiftiError, match="expected a readable MHA file"):
        read_image(tmp_path / "scan.mha")
    (tmp_path / "scan.nii.gz").write_bytes(gzip.compress((tmp_path / "scan.mha").read_bytes()))
    with pytest.raises(NiftiError):
        read_image(tmp_path / "scan.nii.gz")


def _axial(spacing: tuple[float, float, float]) -> Geometry:
    """The grid of a (3, 8, 8) array, axis-aligned, at the origin."""
    return Geometry(size=(8, 8, 3), spacing=spacing, origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
