"""DICOM series in: the series reader's grid kept exactly (oblique too), one series chosen, gaps and strays handled."""

from __future__ import annotations

import locale
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mona_core.data.phantoms import make_phantom
from mona_core.io import (
    DicomError,
    Geometry,
    Volume,
    VolumeTooLarge,
    holds_dicom_series,
    list_dicom_series,
    read_dicom_series,
    read_scan,
    write_dicom_series,
    write_volume,
)

SHAPE = (8, 48, 40)


def _phantom(seed: int = 1, oblique: bool = True) -> Volume:
    """An anisotropic phantom with integer intensities (DICOM stores int16 exactly) and a non-zero origin."""
    image, _ = make_phantom(seed, shape=SHAPE, spacing=(0.8, 0.65, 5.5), oblique=oblique)
    return Volume(np.round(image.array), image.geometry)


def write_sr(path: Path, series_uid: str | None = None) -> Path:
    """A minimal Basic Text SR object: a DICOM file with a series UID and no pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "SR", "MONA-PHANTOM"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("oblique", [True, False])
def test_round_trip_keeps_the_grid_exactly(tmp_path: Path, oblique: bool) -> None:
    volume = _phantom(oblique=oblique)
    files = write_dicom_series(volume, tmp_path / "series", series_description="T1 cine")
    series = read_dicom_series(tmp_path / "series")
    read, want = series.volume.geometry, volume.geometry
    assert read.size == want.size == (40, 48, 8)
    # DICOM decimal strings hold 16 characters: ~1e-13 mm here, far below any voxel.
    for got, expected in ((read.spacing, want.spacing), (read.origin, want.origin), (read.direction, want.direction)):
        np.testing.assert_allclose(got, expected, rtol=0.0, atol=1e-9)
    assert not np.allclose(read.direction, np.eye(3).ravel()) if oblique else read.direction == want.direction
    assert series.volume.array.dtype == np.float32 and np.array_equal(series.volume.array, volume.array)
    assert series.files == tuple(files) and series.description == "T1 cine" and series.modality == "MR"
    headers = series.datasets()
    assert [h.SOPInstanceUID for h in headers] == [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert {h.SeriesInstanceUID for h in headers} == {series.series_uid}
    first = headers[0]
    assert (first.PatientID, str(first.PatientName), first.Modality) == ("MONA-PHANTOM", "MONA^Phantom", "MR")
    assert [float(v) for v in first.PixelSpacing] == [0.65, 0.8] and float(first.SliceThickness) == 5.5
    np.testing.assert_allclose([float(v) for v in headers[3].ImagePositionPatient], _position(want, 3), atol=1e-9)


def _position(geometry: Geometry, k: int) -> np.ndarray:
    axes = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + k * geometry.spacing[2] * axes[:, 2]


def test_float_intensities_are_scaled_into_12_bits(tmp_path: Path) -> None:
    image, _ = make_phantom(2, shape=(3, 24, 24))
    write_dicom_series(image, tmp_path)
    read = read_dicom_series(tmp_path).volume.array
    gain = 4095.0 / float(np.abs(image.array).max())
    assert float(np.abs(read).max()) == 4095.0
    np.testing.assert_allclose(read, image.array * gain, atol=0.5 + 1e-3)


def test_non_image_objects_and_stray_files_are_ignored(tmp_path: Path) -> None:
    volume = _phantom()
    write_dicom_series(volume, tmp_path)
    write_sr(tmp_path / "report.dcm")
    (tmp_path / "notes.txt").write_text("acquired on a Tuesday\n")
    (tmp_path / "DICOMDIR.json").write_text("{}")
    series = list_dicom_series(tmp_path)
    assert len(series) == 1 and len(series[0].files) == SHAPE[0]
    assert np.array_equal(read_dicom_series(tmp_path).volume.array, volume.array)


def test_several_series_need_a_uid_and_the_error_lists_them(tmp_path: Path) -> None:
    first, second = generate_uid(), generate_uid()
    write_dicom_series(_phantom(1), tmp_path / "a", series_uid=first, series_description="cine SAX")
    write_dicom_series(_phantom(2, oblique=False), tmp_path / "b", series_uid=second, series_description="LGE")
    for path in (tmp_path / "b").iterdir():
        shutil.move(path, tmp_path / "a" / f"b_{path.name}")
    with pytest.raises(DicomError, match="expected one DICOM image series in a or a series UID") as error:
        read_dicom_series(tmp_path / "a")
    message = str(error.value)
    assert f"{first} (MR 'cine SAX', 8 files)" in message and f"{second} (MR 'LGE', 8 files)" in message
    chosen = read_dicom_series(tmp_path / "a", series_uid=second)
    assert chosen.series_uid == second and np.array_equal(chosen.volume.array, _phantom(2, oblique=False).array)
    with pytest.raises(DicomError, match=rf"expected a series UID of a, one of .*{first}.*; got 1\.2\.3"):
        read_dicom_series(tmp_path / "a", series_uid="1.2.3")


def test_a_missing_slice_is_named(tmp_path: Path) -> None:
    files = write_dicom_series(_phantom(), tmp_path)
    files[3].unlink()
    with pytest.raises(DicomError, match="expected evenly spaced slices") as error:
        read_dicom_series(tmp_path)
    message = str(error.value)
    assert "every 5.500 mm along the slice normal" in message
    assert "got a gap of 11.000 mm between 0003.dcm" in message and "and 0005.dcm" in message
    assert "about 1 slice(s) missing" in message


def test_a_duplicated_slice_is_named(tmp_path: Path) -> None:
    files = write_dicom_series(_phantom(), tmp_path)
    copy = pydicom.dcmread(files[2])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.save_as(tmp_path / "0003b.dcm")
    with pytest.raises(DicomError, match=r"expected one slice per position in series .* got two at"):
        read_dicom_series(tmp_path)


def test_no_series_and_no_folder(tmp_path: Path) -> None:
    write_sr(tmp_path / "report.dcm")
    (tmp_path / "notes.txt").write_text("no images here\n")
    with pytest.raises(DicomError, match=f"expected a DICOM image series in {tmp_path.name}, got none"):
        read_dicom_series(tmp_path)
    with pytest.raises(DicomError, match="expected a folder holding a DICOM series, got no folder at nope"):
        read_dicom_series(tmp_path / "nope")


def test_max_voxels_is_checked_from_the_headers(tmp_path: Path) -> None:
    write_dicom_series(_phantom(), tmp_path)
    with pytest.raises(VolumeTooLarge, match="expected a volume of at most 1000 voxels, got 15360"):
        read_dicom_series(tmp_path, max_voxels=1000)
    assert read_dicom_series(tmp_path, max_voxels=15360).volume.array.shape == SHAPE


def test_writer_refuses_a_left_handed_grid(tmp_path: Path) -> None:
    volume = _phantom(oblique=False)
    flipped = Geometry(
        volume.geometry.size, volume.geometry.spacing, volume.geometry.origin, (1, 0, 0, 0, 1, 0, 0, 0, -1)
    )
    with pytest.raises(DicomError, match="expected an orthonormal, right-handed direction"):
        write_dicom_series(Volume(volume.array, flipped), tmp_path)
    with pytest.raises(DicomError, match=r"expected a modality in \['CT', 'MR'\], got 'US'"):
        write_dicom_series(volume, tmp_path, modality="US")


def test_read_scan_dispatches_on_the_path(tmp_path: Path) -> None:
    volume = _phantom()
    write_dicom_series(volume, tmp_path / "dicom")
    nifti = write_volume(volume, tmp_path / "scans" / "scan.nii.gz")
    from_dicom, from_file = read_scan(tmp_path / "dicom"), read_scan(nifti)
    assert from_dicom.series is not None and from_dicom.series.files[0].name == "0001.dcm"
    assert from_file.series is None and np.array_equal(from_file.volume.array, from_dicom.volume.array)
    with pytest.raises(DicomError, match=r"expected a DICOM folder for a series UID, got the file scan\.nii\.gz"):
        read_scan(nifti, series_uid="1.2.3")
    assert holds_dicom_series(tmp_path / "dicom")
    assert not holds_dicom_series(tmp_path / "scans") and not holds_dicom_series(tmp_path)


def test_the_process_locale_is_left_as_it_was(tmp_path: Path) -> None:
    """GDCM's writer sets LC_CTYPE to "C" (Python would then read text files as ASCII): it is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
    except locale.Error:
        pytest.skip("no C.UTF-8 locale here")
    try:
        write_dicom_series(_phantom(), tmp_path)
        read_dicom_series(tmp_path)
        assert locale.setlocale(locale.LC_CTYPE) == "C.UTF-8"
    finally:
        locale.setlocale(locale.LC_ALL, saved)
