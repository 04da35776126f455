"""Dataset discovery: nnU-Net raw and plain folders, patient ids, splits by patient, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mona_core.data.dataset import (
    CaseRecord,
    DatasetError,
    DatasetIndex,
    load_dataset,
    load_folder_pairs,
    load_nnunet_raw,
    patient_of,
)
from mona_core.data.phantoms import make_phantom
from mona_core.io.nifti import Volume, write_volume

LABELS = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}


def _raw_dataset(
    root: Path,
    patients: int,
    unlabelled: tuple[str, ...] = (),
    labels: dict[str, int] | None = None,
    channel: str = "cineMRI",
) -> Path:
    """An nnU-Net raw layout with empty files: load_* reads names only, never voxels."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for patient in range(1, patients + 1):
        for frame in (1, 2):
            case_id = f"patient{patient:03d}_frame{frame:02d}"
            (root / "imagesTr" / f"{case_id}_0000.nii.gz").touch()
            if case_id not in unlabelled:
                (root / "labelsTr" / f"{case_id}.nii.gz").touch()
    meta = {
        "name": "Toy",
        "channel_names": {"0": channel},
        "labels": labels or LABELS,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _write_pair(folder: Path, image_name: str, label_name: str | None, label_max: int) -> None:
    image, label = make_phantom(1, shape=(2, 16, 16))
    write_volume(image, folder / image_name)
    if label_name is not None:
        clipped = np.minimum(label.array, label_max).astype(np.uint8)
        write_volume(Volume(array=clipped, geometry=label.geometry), folder / label_name)


@pytest.mark.acdc
def test_acdc_index_matches_the_documented_counts(acdc_root: Path) -> None:
    index = load_dataset(acdc_root)
    assert len(index.cases) == 160 and len(index.patients()) == 80
    assert len(index.splits["train"]) == 140 and len(index.patients("train")) == 70
    assert len(index.splits["val"]) == 20 and len(index.patients("val")) == 10
    assert index.classes == ("background", "RV", "Myo", "LV") and index.num_classes == 4
    assert index.preset == "mri"
    assert not set(index.patients("train")) & set(index.patients("val"))
    assert all(record.label is not None for record in index.cases)


def test_phantom_dataset_is_indexed_with_its_splits(phantom_dataset: Path) -> None:
    index = load_dataset(phantom_dataset)
    assert index.name == "Phantom" and index.preset == "mri"
    assert len(index.cases) == 12 and index.patients() == [f"patient{p:03d}" for p in range(1, 7)]
    assert index.patients("val") == ["patient005"]
    assert index.case("patient006_frame01").label is None
    assert index.case("patient001_frame02").image.name == "patient001_frame02_0000.nii.gz"
    assert index.fully_labelled_patients("train") == ["patient001", "patient002", "patient003", "patient004"]
    summary = json.loads(json.dumps(index.to_dict()))
    assert summary["labelled_cases"] == 10 and summary["patients"] == 6
    assert summary["splits"]["val"] == {"cases": 2, "patients": 1, "labelled_cases": 2}


def test_patient_of_default_and_patterns() -> None:
    assert patient_of("patient012_frame01") == "patient012"
    assert patient_of("liver_17") == "liver_17"
    assert patient_of("ct_0042_a", r"ct_(\d+)_") == "0042"
    assert patient_of("s07-scan2", r"(?P<site>s)(?P<patient>\d+)-") == "07"
    with pytest.raises(DatasetError, match="expected case id 'abc' to match"):
        patient_of("abc", r"p(\d+)")
    with pytest.raises(DatasetError, match="valid patient regex"):
        patient_of("abc", r"(")


def test_generated_split_is_by_patient_and_deterministic(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=10, unlabelled=("patient010_frame02",))
    first, second = load_nnunet_raw(root), load_nnunet_raw(root)
    assert first.splits == second.splits
    assert len(first.patients("val")) == 2  # round(0.2 * 9 fully labelled patients)
    assert not set(first.patients("train")) & set(first.patients("val"))
    assert "patient010" in first.patients("train")
    assert all(record.label is not None for record in first.cases_in("val"))
    assert len(first.splits["train"]) + len(first.splits["val"]) == 20


def test_too_few_labelled_patients_leave_val_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=2, unlabelled=("patient002_frame01", "patient002_frame02"))
    with caplog.at_level(logging.WARNING):
        index = load_nnunet_raw(root)
    assert index.splits["val"] == () and len(index.splits["train"]) == 4
    assert "validation split is empty" in caplog.text


def test_splits_json_as_dict_and_as_nnunet_folds(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=3)
    folds = [{"train": ["patient001_frame01", "patient002_frame01"], "val": ["patient003_frame01"]}]
    (root / "splits.json").write_text(json.dumps(folds))
    assert load_nnunet_raw(root).splits == {k: tuple(v) for k, v in folds[0].items()}
    extra = {"train": ["patient001_frame01"], "val": ["patient002_frame01"], "test": ["patient003_frame02"]}
    (root / "splits.json").write_text(json.dumps(extra))
    index = load_nnunet_raw(root)
    assert index.patients("test") == ["patient003"]


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"train": ["patient001_frame01"], "val": ["nobody_frame01"]}, "unknown ids"),
        ({"train": ["patient001_frame01"]}, "'train' and 'val'"),
        ({"train": ["patient001_frame01"], "val": ["patient001_frame01"]}, "disjoint"),
        ([], "at least one fold"),
    ],
)
def test_bad_splits_json_is_rejected(tmp_path: Path, splits: object, message: str) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=2)
    (root / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(DatasetError, match=message):
        load_nnunet_raw(root)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"background": 0, "RV": 1, "LV": 3}, "0..C-1"),
        ({"background": 0}, "0..C-1"),
        ({"background": 0, "RV": "1"}, "integer label values"),
    ],
)
def test_bad_dataset_json_labels_are_rejected(tmp_path: Path, labels: dict[str, int], message: str) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=2, labels=labels)
    with pytest.raises(DatasetError, match=message):
        load_nnunet_raw(root)


def test_classes_follow_label_values_not_json_order(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=2, labels={"LV": 2, "bg": 0, "RV": 1})
    assert load_nnunet_raw(root).classes == ("background", "RV", "LV")


@pytest.mark.parametrize(("channel", "preset"), [("CT", "ct"), ("ct_arterial", "ct"), ("cineMRI", "mri")])
def test_preset_is_detected_from_channel_names(tmp_path: Path, channel: str, preset: str) -> None:
    root = _raw_dataset(tmp_path / "raw", patients=2, channel=channel)
    assert load_nnunet_raw(root).preset == preset
    assert load_nnunet_raw(root, preset="ct").preset == "ct"
    with pytest.raises(DatasetError, match="expected a preset"):
        load_nnunet_raw(root, preset="xray")


def test_layout_errors_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no folder"):
        load_dataset(tmp_path / "missing")
    root = _raw_dataset(tmp_path / "raw", patients=1)
    (root / "imagesTr" / "patient001_frame01_0001.nii.gz").touch()
    with pytest.raises(DatasetError, match="single-channel"):
        load_nnunet_raw(root)
    (root / "imagesTr" / "patient001_frame01_0001.nii.gz").unlink()
    (root / "labelsTr" / "ghost.nii.gz").touch()
    with pytest.raises(DatasetError, match="labels without images"):
        load_nnunet_raw(root)


def test_index_lookups_reject_unknown_names(phantom_dataset: Path) -> None:
    index = load_dataset(phantom_dataset)
    with pytest.raises(DatasetError, match="expected a case id"):
        index.case("patient999_frame01")
    with pytest.raises(DatasetError, match="expected a split"):
        index.cases_in("test")
    record = CaseRecord("a", "a", Path("a.nii.gz"), None)
    with pytest.raises(DatasetError, match="expected splits"):
        DatasetIndex(Path("."), "x", ("background", "fg"), "mri", (record,), {"train": ("a",)})


def test_folder_pairs_flat_with_label_and_seg_suffixes(tmp_path: Path) -> None:
    _write_pair(tmp_path, "caseA.nii.gz", "caseA_label.nii.gz", label_max=2)
    _write_pair(tmp_path, "caseB.nii", "caseB_seg.nii.gz", label_max=1)
    _write_pair(tmp_path, "caseC.nii.gz", None, label_max=0)
    index = load_dataset(tmp_path)
    assert [record.case_id for record in index.cases] == ["caseA", "caseB", "caseC"]
    assert index.classes == ("background", "class1", "class2") and index.preset == "mri"
    assert index.case("caseB").label is not None and index.case("caseB").label.name == "caseB_seg.nii.gz"
    assert index.case("caseC").label is None
    assert index.splits["val"] and index.patients("val")[0] in {"caseA", "caseB"}


def test_folder_pairs_in_subfolders_with_given_classes(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("p1_frame01.nii.gz", "p1_frame02.nii.gz", "p2_frame01.nii.gz"):
        (tmp_path / "images" / name).touch()  # given classes: no voxel is read
        (tmp_path / "labels" / name).touch()
    index = load_folder_pairs(tmp_path, classes=("background", "liver"), preset="ct")
    assert index.patients() == ["p1", "p2"] and index.classes == ("background", "liver")
    assert index.preset == "ct"
    with pytest.raises(DatasetError, match="expected classes"):
        load_folder_pairs(tmp_path, classes=("liver", "background"))


def test_folder_pairs_without_labels_need_classes(tmp_path: Path) -> None:
    (tmp_path / "scan.nii.gz").touch()
    with pytest.raises(DatasetError, match="pass classes"):
        load_folder_pairs(tmp_path)
