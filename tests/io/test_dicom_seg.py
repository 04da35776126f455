"""DICOM SEG out, read back with pydicom alone: frames equal the mask per segment, references and names right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mona_core.data.phantoms import PHANTOM_CLASSES, make_phantom
from mona_core.io import (
    DicomError,
    DicomSeries,
    NiftiError,
    Volume,
    read_dicom_series,
    write_dicom_seg,
    write_dicom_series,
)

SHAPE = (6, 40, 48)


@pytest.fixture
def source(tmp_path: Path) -> tuple[DicomSeries, np.ndarray]:
    """An oblique phantom series on disk, read back, and its label on the same grid."""
    image, label = make_phantom(4, shape=SHAPE, spacing=(0.7, 0.9, 6.5))
    write_dicom_series(Volume(np.round(image.array), image.geometry), tmp_path / "series")
    return read_dicom_series(tmp_path / "series"), label.array


def segments_of(seg: pydicom.Dataset, source: DicomSeries) -> dict[int, np.ndarray]:
    """Each segment's binary volume, rebuilt from the frames through their references to the source instances."""
    index = {pydicom.dcmread(path).SOPInstanceUID: k for k, path in enumerate(source.files)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    volumes = {int(s.SegmentNumber): np.zeros(source.volume.geometry.shape, np.uint8) for s in seg.SegmentSequence}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        expected = [float(v) for v in pydicom.dcmread(source.files[index[uid]]).ImagePositionPatient]
        np.testing.assert_allclose(position, expected, atol=1e-6)
        volumes[number][index[uid]] = frame
    return volumes


def test_seg_frames_equal_the_mask_per_segment(source: tuple[DicomSeries, np.ndarray], tmp_path: Path) -> None:
    series, label = source
    path = write_dicom_seg(label, series, PHANTOM_CLASSES, tmp_path / "out" / "seg.dcm", algorithm_version="abc123")
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {h.SOPInstanceUID for h in series.datasets()}
    assert seg.StudyInstanceUID == series.datasets()[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == series.datasets()[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["RV", "Myo", "LV"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "MONA"
        assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "abc123"
    volumes = segments_of(seg, series)
    assert sorted(volumes) == [1, 2, 3]
    for number, volume in volumes.items():
        assert volume.any()
        np.testing.assert_array_equal(volume, (label == number).astype(np.uint8), err_msg=f"segment {number}")
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.dcm"]


def test_an_absent_class_is_an_empty_segment(source: tuple[DicomSeries, np.ndarray], tmp_path: Path) -> None:
    series, label = source
    only_myo = np.where(label == 2, 2, 0).astype(np.uint8)
    seg = pydicom.dcmread(write_dicom_seg(only_myo, series, PHANTOM_CLASSES, tmp_path / "seg.dcm"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["RV", "Myo", "LV"]
    volumes = segments_of(seg, series)
    assert not volumes[1].any() and not volumes[3].any()
    np.testing.assert_array_equal(volumes[2], (label == 2).astype(np.uint8))


def test_a_mask_off_the_grid_or_out_of_range_is_refused(source: tuple[DicomSeries, np.ndarray], tmp_path: Path) -> None:
    series, label = source
    shape = r"of shape \(6, 40, 48\), got \(5, 40, 48\)"
    with pytest.raises(DicomError, match=rf"expected a mask on the source grid, {shape}"):
        write_dicom_seg(label[:5], series, PHANTOM_CLASSES, tmp_path / "seg.dcm")
    with pytest.raises(NiftiError, match=r"expected labels in 0\.\.2, got values in 0\.\.3 in the mask"):
        write_dicom_seg(label, series, ("background", "RV", "Myo"), tmp_path / "seg.dcm")
    with pytest.raises(DicomError, match="expected background and at least one class"):
        write_dicom_seg(label, series, ("background",), tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
