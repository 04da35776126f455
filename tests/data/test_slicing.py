"""Intensity presets and the volume <-> slice transforms shared by training and inference."""

from __future__ import annotations

import numpy as np
import pytest

from mona_core.data.phantoms import make_phantom
from mona_core.data.presets import CT_WINDOW, normalize
from mona_core.data.slicing import image_to_slices, label_to_slices, predict_volume, resize_slices


def test_mri_preset_is_per_volume_min_max() -> None:
    volume = np.array([[[10.0, 20.0], [30.0, 50.0]]])
    out = normalize(volume, "mri")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.isclose(out[0, 0, 1], 0.25)
    assert np.array_equal(normalize(np.full((2, 3, 3), 7.0), "mri"), np.zeros((2, 3, 3), np.float32))


def test_ct_preset_clips_the_hounsfield_window() -> None:
    low, high = CT_WINDOW
    volume = np.array([[[-1000.0, low, 25.0, high, 3000.0]]], dtype=np.int16)
    out = normalize(volume, "ct")
    assert out.dtype == np.float32
    assert np.allclose(out[0, 0], [0.0, 0.0, (25.0 - low) / (high - low), 1.0, 1.0])


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected an intensity preset"):
        normalize(np.zeros((1, 2, 2)), "pet")


def test_resize_slices_keeps_the_slice_axis() -> None:
    array = np.random.default_rng(0).random((3, 10, 14)).astype(np.float32)
    same = resize_slices(array, 10, 14, order=1)
    assert np.array_equal(same, array) and same is not array
    out = resize_slices(array, 20, 7, order=1)
    assert out.shape == (3, 20, 7) and out.dtype == np.float32
    with pytest.raises(ValueError, match=r"expected a \(z, y, x\) array"):
        resize_slices(array[0], 5, 5, order=1)


def test_label_resizing_keeps_label_values() -> None:
    _, label = make_phantom(1, shape=(3, 40, 48))
    slices = label_to_slices(label.array, 32)
    assert slices.shape == (3, 32, 32) and slices.dtype == np.uint8
    assert set(np.unique(slices)) <= set(np.unique(label.array))


def test_image_to_slices_is_normalised_and_channelled() -> None:
    image, _ = make_phantom(1, shape=(3, 40, 48))
    slices = image_to_slices(image.array, "mri", 32)
    assert slices.shape == (3, 1, 32, 32) and slices.dtype == np.float32
    assert slices.min() >= 0.0 and slices.max() <= 1.0


def test_predict_volume_maps_back_to_the_input_grid() -> None:
    volume = np.zeros((5, 30, 44), dtype=np.float32)
    volume[:, :, 22:] = 100.0
    calls: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return np.concatenate([1.0 - batch, batch], axis=1)

    mask = predict_volume(volume, predict, "mri", size=16, batch_size=2)
    assert mask.shape == volume.shape and mask.dtype == np.uint8
    assert calls == [2, 2, 1]
    assert np.mean(mask == (volume > 50)) > 0.95
