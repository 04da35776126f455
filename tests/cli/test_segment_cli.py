"""``mona segment`` on every kind of input: files of each format, a DICOM series folder, a mixed batch folder, and
DICOM SEG output; usage errors exit 2, a batch with a bad scan writes the others and exits 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mona_core.cli import main
from mona_core.data.phantoms import make_phantom
from mona_core.export import export_checkpoint
from mona_core.inference import Segmenter
from mona_core.io import Volume, read_dicom_series, read_image, read_label, write_dicom_series, write_volume
from tests.export.test_export import tiny_checkpoint
from tests.io.test_dicom_seg import segments_of

SHAPE = (8, 48, 48)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(tiny_checkpoint(), tmp_path_factory.mktemp("segment") / "model").model_dir


def _scan(seed: int) -> Volume:
    """A small oblique phantom with integer intensities, so a DICOM copy holds exactly the same voxels."""
    image, _ = make_phantom(seed, shape=SHAPE, spacing=(0.9, 0.8, 7.0))
    return Volume(np.round(image.array), image.geometry)


def _expected(model_dir: Path, volume: Volume) -> np.ndarray:
    return Segmenter(model_dir, device="cpu").segment_array(volume.array)


def _segment(model_dir: Path, *args: str | Path) -> int:
    return main(["segment", "--model", str(model_dir), *(str(a) for a in args)])


@pytest.mark.parametrize(("name", "output", "written"), [("s.mha", "m.nrrd", "m.nrrd"), ("s.nrrd", "m", "m.nii.gz")])
def test_a_file_gives_one_mask_on_its_grid(
    model_dir: Path, tmp_path: Path, name: str, output: str, written: str
) -> None:
    volume = _scan(1)
    source = write_volume(volume, tmp_path / name)
    assert _segment(model_dir, source, "-o", tmp_path / "out" / output) == 0
    mask = read_label(tmp_path / "out" / written)
    assert mask.geometry.size == volume.geometry.size
    for got, want in zip(
        (mask.geometry.spacing, mask.geometry.origin, mask.geometry.direction),
        (volume.geometry.spacing, volume.geometry.origin, volume.geometry.direction),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=0.0, atol=1e-9 if written.endswith(".nrrd") else 1e-5)
    np.testing.assert_array_equal(mask.array, _expected(model_dir, volume))


def test_a_dicom_folder_gives_one_mask_on_the_series_grid(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volume = _scan(2)
    write_dicom_series(volume, tmp_path / "series")
    assert _segment(model_dir, tmp_path / "series", "-o", tmp_path / "mask.mha") == 0
    assert "read " in capsys.readouterr().out
    series = read_dicom_series(tmp_path / "series")
    mask = read_label(tmp_path / "mask.mha")
    assert mask.geometry.size == series.volume.geometry.size
    np.testing.assert_allclose(mask.geometry.origin, series.volume.geometry.origin, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(mask.geometry.direction, series.volume.geometry.direction, rtol=0.0, atol=1e-12)
    np.testing.assert_array_equal(mask.array, _expected(model_dir, series.volume))


def test_dicom_seg_output_holds_the_mask(model_dir: Path, tmp_path: Path) -> None:
    write_dicom_series(_scan(3), tmp_path / "series")
    assert _segment(model_dir, tmp_path / "series", "-o", tmp_path / "seg", "--dicom-seg") == 0
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    series = read_dicom_series(tmp_path / "series")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["RV", "Myo", "LV"]
    expected = _expected(model_dir, series.volume)
    for number, volume in segments_of(seg, series).items():
        np.testing.assert_array_equal(volume, (expected == number).astype(np.uint8))


def test_usage_errors_exit_2(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = write_volume(_scan(4), tmp_path / "scan.nii.gz")
    assert _segment(model_dir, scan, "-o", tmp_path / "seg.dcm", "--dicom-seg") == 2
    assert "expected a folder holding a DICOM series for --dicom-seg" in capsys.readouterr().err
    first, second = generate_uid(), generate_uid()
    write_dicom_series(_scan(5), tmp_path / "two", series_uid=first)
    for path in write_dicom_series(_scan(6), tmp_path / "other", series_uid=second):
        path.rename(tmp_path / "two" / f"other_{path.name}")
    assert _segment(model_dir, tmp_path / "two", "-o", tmp_path / "m.nii.gz") == 2
    err = capsys.readouterr().err
    assert "expected one DICOM image series in two or a series UID to choose (--series-uid)" in err
    assert first in err and second in err
    assert _segment(model_dir, tmp_path / "two", "-o", tmp_path / "m.nii.gz", "--series-uid", second) == 0
    np.testing.assert_array_equal(read_label(tmp_path / "m.nii.gz").array, _expected(model_dir, _scan(6)))
    (tmp_path / "two" / "0004.dcm").unlink()
    assert _segment(model_dir, tmp_path / "two", "-o", tmp_path / "m.nii.gz", "--series-uid", first) == 2
    assert "got a gap of 14.000 mm between 0003.dcm" in capsys.readouterr().err


def _mixed_folder(root: Path) -> Path:
    """NIfTI, MHA, NRRD, a DICOM sub-folder, a corrupt NIfTI and a note that is no scan."""
    for seed, name in enumerate(("a.nii.gz", "b.mha", "c.nrrd"), start=10):
        write_volume(_scan(seed), root / name)
    write_dicom_series(_scan(13), root / "d")
    (root / "broken.nii.gz").write_bytes(b"not a scan at all")
    (root / "README.txt").write_text("scans for the batch test\n")
    return root


def test_a_mixed_batch_writes_the_good_scans_and_exits_1(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _mixed_folder(tmp_path / "in")
    assert _segment(model_dir, folder, "-o", tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]
    assert "skipped broken.nii.gz: expected a complete NIfTI file" in captured.err
    assert "4 of 5 scans segmented" in captured.out and "scans/s" in captured.out
    assert "1 failed: broken.nii.gz" in captured.out
    for name, seed in (("a.nii.gz", 10), ("b.mha", 11), ("c.nrrd", 12)):
        source = read_image(folder / name)
        mask = read_label(tmp_path / "out" / f"{name.split('.')[0]}.nii.gz", source.geometry)
        np.testing.assert_array_equal(mask.array, _expected(model_dir, _scan(seed)))
    dicom = read_dicom_series(folder / "d")
    mask = read_label(tmp_path / "out" / "d.nii.gz", dicom.volume.geometry)
    np.testing.assert_array_equal(mask.array, _expected(model_dir, dicom.volume))


def test_a_batch_with_dicom_seg_and_an_output_inside_the_input(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _mixed_folder(tmp_path / "in")
    (folder / "broken.nii.gz").unlink()
    out = folder / "masks"
    assert _segment(model_dir, folder, "-o", out, "--dicom-seg") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.dcm"]
    assert pydicom.dcmread(out / "d.dcm").Modality == "SEG"
    assert "4 of 4 scans segmented" in capsys.readouterr().out
    assert _segment(model_dir, folder, "-o", out, "--series-uid", "1.2.3") == 2
    assert "expected a folder holding one DICOM series for --series-uid" in capsys.readouterr().err


def test_a_batch_without_dicom_refuses_dicom_seg(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_volume(_scan(20), tmp_path / "in" / "a.nii.gz")
    assert _segment(model_dir, tmp_path / "in", "-o", tmp_path / "out", "--dicom-seg") == 2
    assert "expected DICOM series folders for --dicom-seg, got only image files" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _segment(model_dir, tmp_path / "empty", "-o", tmp_path / "out") == 2
    assert "expected scans in" in capsys.readouterr().err
