"""Synthetic cardiac-like phantoms: content, geometry, speed and the nnU-Net raw dataset writer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mona_core.data.dataset import load_dataset
from mona_core.data.phantoms import PHANTOM_CLASSES, make_phantom, write_phantom_case, write_phantom_dataset
from mona_core.io.nifti import read_image, read_label

SMALL = (6, 64, 72)


def test_phantom_volumes_share_an_oblique_anisotropic_grid() -> None:
    image, label = make_phantom(0, shape=SMALL)
    assert image.array.shape == SMALL and image.array.dtype == np.float32
    assert label.array.dtype == np.uint8 and image.geometry == label.geometry
    geometry = image.geometry
    assert geometry.size == (72, 64, 6) and geometry.spacing == (1.5, 1.5, 8.0)
    assert any(abs(v) > 1.0 for v in geometry.origin)
    direction = np.asarray(geometry.direction).reshape(3, 3)
    assert np.allclose(direction @ direction.T, np.eye(3)) and np.isclose(np.linalg.det(direction), 1.0)
    assert not np.allclose(direction, np.eye(3))
    straight, _ = make_phantom(0, shape=SMALL, oblique=False)
    assert straight.geometry.direction == tuple(np.eye(3).reshape(-1))


def test_phantoms_are_seeded() -> None:
    first, first_label = make_phantom(4, shape=SMALL)
    again, again_label = make_phantom(4, shape=SMALL)
    other, other_label = make_phantom(5, shape=SMALL)
    assert np.array_equal(first.array, again.array) and np.array_equal(first_label.array, again_label.array)
    assert not np.array_equal(first_label.array, other_label.array)
    assert first.geometry != other.geometry


def test_phantom_labels_are_cardiac_like_and_long_tailed() -> None:
    _, label = make_phantom(2)
    fractions = np.bincount(label.array.ravel(), minlength=4) / label.array.size
    assert len(fractions) == len(PHANTOM_CLASSES)
    assert 0.9 <= fractions[0] < 0.99 and all(fractions[1:] > 0.002)
    lv_area = (label.array == 3).sum(axis=(1, 2))
    assert np.all(np.diff(lv_area) < 0)  # the LV shrinks from base to apex
    rv_area = (label.array == 1).sum(axis=(1, 2))
    assert rv_area[0] > 0 and rv_area[-1] == 0  # the RV vanishes at the apex


def test_class_intensities_are_clearly_distinct() -> None:
    for seed in range(3):
        image, label = make_phantom(seed)
        medians = [float(np.median(image.array[label.array == value])) for value in range(4)]
        background, rv, myo, lv = (m / medians[3] for m in medians)
        assert background < 0.35 < myo < 0.65 < rv < 0.9 < lv


def test_make_phantom_is_fast() -> None:
    make_phantom(0)
    start = time.perf_counter()
    for seed in range(5):
        make_phantom(seed)
    assert (time.perf_counter() - start) / 5 < 0.25


def test_bad_phantom_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a \\(z, y, x\\) shape"):
        make_phantom(0, shape=(4, 8, 8))
    with pytest.raises(ValueError, match="positive spacings"):
        make_phantom(0, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="val_patients"):
        write_phantom_dataset(tmp_path, n_patients=3, unlabelled_patients=1, val_patients=3)
    with pytest.raises(ValueError, match="unlabelled_patients < n_patients"):
        write_phantom_dataset(tmp_path, n_patients=2, unlabelled_patients=2)


def test_write_phantom_case_without_label(tmp_path: Path) -> None:
    image_path, label_path = write_phantom_case(tmp_path / "scan.nii.gz", None, seed=9, shape=SMALL)
    assert label_path is None and read_image(image_path).array.shape == SMALL
    assert list(tmp_path.iterdir()) == [image_path]


def test_phantom_dataset_layout(phantom_dataset: Path) -> None:
    meta = json.loads((phantom_dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MRI"} and meta["numTraining"] == 12
    assert meta["labels"] == {"background": 0, "RV": 1, "Myo": 2, "LV": 3}
    splits = json.loads((phantom_dataset / "splits.json").read_text())
    assert splits["val"] == ["patient005_frame01", "patient005_frame02"] and len(splits["train"]) == 10
    assert len(list((phantom_dataset / "imagesTr").iterdir())) == 12
    assert not (phantom_dataset / "labelsTr" / "patient006_frame01.nii.gz").exists()
    image = read_image(phantom_dataset / "imagesTr" / "patient001_frame02_0000.nii.gz")
    label = read_label(phantom_dataset / "labelsTr" / "patient001_frame02.nii.gz", image.geometry, 4)
    assert image.array.shape == (6, 64, 72) and set(np.unique(label.array)) == {0, 1, 2, 3}
    assert load_dataset(phantom_dataset).classes == PHANTOM_CLASSES


def test_frames_and_patients_differ(phantom_dataset: Path) -> None:
    labels = [
        read_label(phantom_dataset / "labelsTr" / f"{case}.nii.gz").array
        for case in ("patient001_frame01", "patient001_frame02", "patient002_frame01")
    ]
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[0], labels[2])
