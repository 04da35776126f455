"""The batch loop the CLI and a worker task share: one model, many scans, a bad scan recorded and skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mona_core.data.phantoms import make_phantom
from mona_core.export import export_checkpoint
from mona_core.inference import BatchItem, Segmented, Segmenter, segment_folder, segment_scan
from mona_core.io import DicomError, Volume, read_label, write_dicom_series, write_volume
from tests.export.test_export import tiny_checkpoint


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    model_dir = export_checkpoint(tiny_checkpoint(), tmp_path_factory.mktemp("batch") / "model").model_dir
    return Segmenter(model_dir, device="cpu", batch_size=4, threads=1)


def _scan(seed: int) -> Volume:
    image, _ = make_phantom(seed, shape=(4, 32, 40), spacing=(1.1, 0.9, 6.0))
    return Volume(np.round(image.array), image.geometry)


def test_segment_scan_writes_by_extension_and_times_each_step(segmenter: Segmenter, tmp_path: Path) -> None:
    source = write_volume(_scan(1), tmp_path / "scan.nrrd")
    result = segment_scan(segmenter, source, tmp_path / "out" / "mask.mha")
    assert result.output == tmp_path / "out" / "mask.mha"
    assert read_label(result.output, result.image.geometry).array.tolist() == result.mask.array.tolist()
    assert min(result.timings.read, result.timings.segment, result.timings.write) >= 0.0
    assert result.timings.total == pytest.approx(result.timings.read + result.timings.segment + result.timings.write)
    with pytest.raises(DicomError, match=r"expected a DICOM series for a DICOM SEG output, got the file scan\.nrrd"):
        segment_scan(segmenter, source, tmp_path / "seg.dcm", dicom_seg=True)


def test_segment_folder_records_each_scan_and_goes_on(segmenter: Segmenter, tmp_path: Path) -> None:
    write_volume(_scan(1), tmp_path / "in" / "a.nii.gz")
    write_volume(_scan(2), tmp_path / "in" / "a.mha")  # the same output name: a.mha (first by name) wins
    write_dicom_series(_scan(3), tmp_path / "in" / "b")
    (tmp_path / "in" / "empty").mkdir()
    (tmp_path / "in" / "c.nrrd").write_text("NRRD0004\nnot really\n")
    seen: list[tuple[str, int, int]] = []
    written: list[str] = []

    def on_item(item: BatchItem, number: int, total: int) -> None:
        seen.append((item.name, number, total))

    def on_segmented(name: str, result: Segmented) -> None:
        written.append(name)

    items = segment_folder(segmenter, tmp_path / "in", tmp_path / "out", on_item=on_item, on_segmented=on_segmented)
    outcome = {item.source.name: (item.output.name if item.output else None, item.error) for item in items}
    assert outcome["a.nii.gz"] == (None, "expected one scan per output name, got another scan writing a.nii.gz")
    assert outcome["a.mha"] == ("a.nii.gz", None) and outcome["b"] == ("b.nii.gz", None)
    assert outcome["empty"][1] == "expected a DICOM image series in empty, got none"
    assert outcome["c.nrrd"][0] is None and "expected a readable NRRD file" in str(outcome["c.nrrd"][1])
    assert [number for _, number, _ in seen] == [1, 2, 3, 4, 5] and {total for *_, total in seen} == {5}
    assert written == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
