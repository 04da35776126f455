"""Volumes to square training slices and back.

The slice axis is array axis 0 (the NIfTI z axis). Images are resized with linear interpolation, labels and
predicted masks with nearest neighbour. Training, validation and torch-free inference all use these functions, so
pre- and post-processing cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from mona_core.data.presets import normalize

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Maps a float32 batch ``(N, 1, S, S)`` to logits or probabilities ``(N, C, S, S)``."""


def resize_slices(array: np.ndarray, height: int, width: int, order: int) -> np.ndarray:
    """Resize every slice of ``array`` (z, y, x) to (height, width); order 1 = linear, 0 = nearest."""
    if array.ndim != 3:
        raise ValueError(f"expected a (z, y, x) array, got shape {array.shape}")
    _, in_h, in_w = array.shape
    if (in_h, in_w) == (height, width):
        return array.copy()
    factors = (1.0, height / in_h, width / in_w)
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=False)
    return np.asarray(out, dtype=array.dtype)


def image_to_slices(array: np.ndarray, preset: str, size: int) -> np.ndarray:
    """Normalise a raw image volume with ``preset`` and return float32 slices ``(z, 1, size, size)``."""
    normalised = normalize(array, preset)
    return resize_slices(normalised, size, size, order=1)[:, None].astype(np.float32)


def label_to_slices(array: np.ndarray, size: int) -> np.ndarray:
    """Resize a label volume to uint8 slices ``(z, size, size)`` with nearest neighbour."""
    return resize_slices(array.astype(np.uint8, copy=False), size, size, order=0)


def predict_volume(array: np.ndarray, predict: PredictFn, preset: str, size: int, batch_size: int = 16) -> np.ndarray:
    """Segment a raw image volume (z, y, x) slice by slice; returns a uint8 mask of the same shape."""
    slices = image_to_slices(array, preset, size)
    labels = np.empty((slices.shape[0], size, size), dtype=np.uint8)
    for start in range(0, slices.shape[0], batch_size):
        scores = predict(slices[start : start + batch_size])
        labels[start : start + batch_size] = np.argmax(scores, axis=1).astype(np.uint8)
    return resize_slices(labels, array.shape[1], array.shape[2], order=0)
