"""Intensity presets and the volume <-> slice transforms shared by training and inference."""

from __future__ import annotations

import numpy as np
import pytest

from mona_core.data.phantoms import make_phantom
from mona_core.data.presets import CT_WINDOW, normalize
from mona_core.data.slicing import (
    image_to_slices,
    label_to_slices,
    predict_volume,
    resize_planes_linear,
    resize_slices,
)


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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def _ideal_network(batch: np.ndarray) -> np.ndarray:
    """A 'network' that sees the structure perfectly at its own resolution: logits of foreground vs background."""
    return np.concatenate([8.0 * (0.5 - batch), 8.0 * (batch - 0.5)], axis=1)


@pytest.mark.parametrize(
    ("structure", "size", "margin"),
    [("disk", 24, 0.01), ("ring", 48, 0.05), ("bar", 32, 0.03)],
)
def test_resizing_probabilities_is_closer_to_the_truth_than_resizing_labels(
    structure: str, size: int, margin: float
) -> None:
    """At network size the boundary is blocky; argmax after resizing the probabilities puts it between the network's
    pixels. On a 96 x 96 grid the thin ring (4 px) and bar (5 px) lose most to nearest-neighbour label resizing."""
    yy, xx = np.mgrid[0:96, 0:96]
    radius = np.hypot(yy - 47.3, xx - 50.1)
    truth = {"disk": radius < 21.0, "ring": np.abs(radius - 25.0) < 2.0, "bar": np.abs(yy - 0.3 * xx - 30.0) < 2.5}
    volume = (100.0 * truth[structure]).astype(np.float32)[None]
    old = predict_volume(volume, _ideal_network, "mri", size, resample="labels")[0].astype(bool)
    new = predict_volume(volume, _ideal_network, "mri", size)[0].astype(bool)
    assert (old != new).any()
    assert _dice(new, truth[structure]) > _dice(old, truth[structure]) + margin


def test_label_resampling_is_the_former_nearest_neighbour_path() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((3, 30, 44)).astype(np.float32)
    logits = rng.standard_normal((3, 4, 16, 16)).astype(np.float32)
    former = resize_slices(np.argmax(logits, axis=1).astype(np.uint8), 30, 44, order=0)
    mask = predict_volume(volume, lambda batch: logits[: len(batch)], "mri", 16, batch_size=3, resample="labels")
    np.testing.assert_array_equal(mask, former)
    with pytest.raises(ValueError, match=r"expected a resampling in \('probabilities', 'logits', 'labels'\)"):
        predict_volume(volume, lambda batch: logits[: len(batch)], "mri", 16, resample="nearest")


def test_probabilities_are_resized_per_batch_with_the_same_result() -> None:
    """Memory stays bounded by the batch: any batch size gives the mask of the whole volume at once."""
    rng = np.random.default_rng(1)
    volume = rng.random((5, 30, 44)).astype(np.float32)
    logits = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    offsets: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        start = sum(offsets)
        offsets.append(len(batch))
        return logits[start : start + len(batch)]

    whole = predict_volume(volume, lambda batch: logits, "mri", 16, batch_size=5)
    assert np.array_equal(predict_volume(volume, predict, "mri", 16, batch_size=2), whole)
    assert offsets == [2, 2, 1] and whole.dtype == np.uint8 and set(np.unique(whole)) <= {0, 1, 2}


@pytest.mark.parametrize(("height", "width"), [(40, 33), (16, 16), (7, 50), (90, 12)])
def test_matrix_resizing_is_scipy_linear_zoom(height: int, width: int) -> None:
    """The fast path for network outputs resizes exactly as images are resized (zoom, order 1, edges aligned)."""
    planes = np.random.default_rng(2).standard_normal((6, 16, 21)).astype(np.float32)
    fast = resize_planes_linear(planes, height, width)
    assert fast.shape == (6, height, width) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, resize_slices(planes, height, width, order=1), rtol=0.0, atol=1e-5)
