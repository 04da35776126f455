"""Volumes to square training slices and back.

The slice axis is array axis 0 (the NIfTI z axis). Images are resized with linear interpolation, labels with nearest
neighbour. A prediction goes back to the input grid as class probabilities: the network's softmax is resized
linearly and argmaxed there, so boundaries fall between the network's pixels instead of on its blocky grid
(``benchmarks/resampling.py`` measures the gain over resizing the argmaxed labels). Training, validation and
torch-free inference all use these functions, so pre- and post-processing cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
from scipy import ndimage

from mona_core.data.presets import normalize

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Maps a float32 batch ``(N, 1, S, S)`` to logits ``(N, C, S, S)`` (channel 0 = background)."""

RESAMPLING: Final = ("probabilities", "logits", "labels")
"""How a prediction returns to the input grid: softmax probabilities or raw logits resized linearly then argmaxed,
or (the former behaviour) labels argmaxed at network size then resized with nearest neighbour."""

POSTPROCESSING: Final = ("none", "largest_component")
"""What is done to a volume's mask after it is back on the input grid: nothing, or each foreground class keeps only
its largest 3D connected component (``keep_largest_components``)."""


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


def linear_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1D linear interpolation in ``resize_slices``' convention (pixel edges aligned, edge values held), as the two
    input indices of each output sample and the weight of the second: ``(low, high, frac)``."""
    x = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0, in_size - 1)
    low = np.floor(x).astype(np.int64)
    return low, np.minimum(low + 1, in_size - 1), (x - low).astype(np.float32)


def resize_planes_linear(planes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float planes ``(M, h, w)`` to ``(M, height, width)`` linearly, as ``resize_slices(order=1)`` does
    (equal to ~1e-7): two taps per output sample along each axis (gathers and a weighted sum), so the cost grows
    with the output's size only, not with the product of the input's and the output's."""
    if planes.ndim != 3:
        raise ValueError(f"expected planes of shape (M, h, w), got {planes.shape}")
    values = planes.astype(np.float32, copy=False)
    low, high, frac = linear_taps(height, values.shape[1])
    weight = frac[None, :, None]
    along_rows = values[:, low, :] * (1.0 - weight) + values[:, high, :] * weight
    low, high, frac = linear_taps(width, values.shape[2])
    resized: np.ndarray = along_rows[:, :, low] * (1.0 - frac) + along_rows[:, :, high] * frac
    return resized


def image_to_slices(array: np.ndarray, preset: str, size: int) -> np.ndarray:
    """Normalise a raw image volume with ``preset`` and return float32 slices ``(z, 1, size, size)``."""
    normalised = normalize(array, preset)
    return resize_slices(normalised, size, size, order=1)[:, None].astype(np.float32)


def label_to_slices(array: np.ndarray, size: int) -> np.ndarray:
    """Resize a label volume to uint8 slices ``(z, size, size)`` with nearest neighbour."""
    return resize_slices(array.astype(np.uint8, copy=False), size, size, order=0)


def softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax over ``axis`` in float32, stable for large logits."""
    shifted: np.ndarray = scores.astype(np.float32) - scores.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def scores_to_labels(scores: np.ndarray, height: int, width: int, resample: str = "probabilities") -> np.ndarray:
    """uint8 labels ``(N, height, width)`` of network outputs ``(N, C, S, S)``; ``resample`` as in ``RESAMPLING``."""
    if scores.ndim != 4:
        raise ValueError(f"expected network outputs of shape (N, C, S, S), got {scores.shape}")
    if resample == "labels":
        return resize_slices(np.argmax(scores, axis=1).astype(np.uint8), height, width, order=0)
    if resample not in RESAMPLING:
        raise ValueError(f"expected a resampling in {RESAMPLING}, got {resample!r}")
    values = softmax(scores) if resample == "probabilities" else scores.astype(np.float32, copy=False)
    n, c, in_h, in_w = values.shape
    resized = resize_planes_linear(values.reshape(n * c, in_h, in_w), height, width)
    labels: np.ndarray = np.argmax(resized.reshape(n, c, height, width), axis=1).astype(np.uint8)
    return labels


def keep_largest_components(mask: np.ndarray) -> np.ndarray:
    """``mask`` (z, y, x) with each foreground class reduced to its largest connected component (voxels sharing a
    face are connected; on a tie the first component in scan order stays); the rest becomes background."""
    if mask.ndim != 3:
        raise ValueError(f"expected a (z, y, x) mask, got shape {mask.shape}")
    kept = np.zeros_like(mask)
    for value in np.unique(mask):
        if value == 0:
            continue
        components, count = ndimage.label(mask == value)
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        kept[components == int(np.argmax(sizes)) + 1] = value
    return kept


def check_postprocess(postprocess: str) -> None:
    """A ValueError unless ``postprocess`` is one of ``POSTPROCESSING``."""
    if postprocess not in POSTPROCESSING:
        raise ValueError(f"expected a post-processing in {POSTPROCESSING}, got {postprocess!r}")


def postprocess_mask(mask: np.ndarray, postprocess: str) -> np.ndarray:
    """Apply one of ``POSTPROCESSING`` to a volume's mask."""
    check_postprocess(postprocess)
    return keep_largest_components(mask) if postprocess == "largest_component" else mask


def predict_volume(
    array: np.ndarray,
    predict: PredictFn,
    preset: str,
    size: int,
    batch_size: int = 16,
    resample: str = "probabilities",
    postprocess: str = "none",
) -> np.ndarray:
    """Segment a raw image volume (z, y, x) slice by slice; returns a uint8 mask of the same shape.

    Each batch's outputs are resized to the input's in-plane size and argmaxed there (``resample``), so memory
    holds ``batch_size x C`` full-size planes at most, never the whole volume's probabilities. The whole mask is
    then post-processed (``postprocess``, one of ``POSTPROCESSING``).
    """
    check_postprocess(postprocess)  # before the network runs, not after
    slices = image_to_slices(array, preset, size)
    labels = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, slices.shape[0], batch_size):
        scores = predict(slices[start : start + batch_size])
        labels[start : start + batch_size] = scores_to_labels(scores, array.shape[1], array.shape[2], resample)
    return postprocess_mask(labels, postprocess)
