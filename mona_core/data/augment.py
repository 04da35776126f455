"""Weak augmentation of 2D slices (numpy): random 90-degree rotation + flip, or a small random rotation.

This is the teacher-side ("weak") augmentation of the paper and the supervised baseline's augmentation. Images are
interpolated linearly, labels with nearest neighbour, so labels stay integer and aligned.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def weak_augment(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, max_degrees: float = 20.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augment one slice. ``image``: (1, H, W) float32; ``label``: (H, W) uint8 or None (unlabelled)."""
    if rng.random() < 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(1, 3))
        image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=axis)
        if label is not None:
            label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis - 1)
    elif rng.random() < 0.5:
        angle = float(rng.uniform(-max_degrees, max_degrees))
        image = ndimage.rotate(image, angle, axes=(1, 2), order=1, reshape=False, mode="constant")
        if label is not None:
            label = ndimage.rotate(label, angle, axes=(0, 1), order=0, reshape=False, mode="constant")
    image = np.ascontiguousarray(image, dtype=np.float32)
    return image, (None if label is None else np.ascontiguousarray(label, dtype=np.uint8))
