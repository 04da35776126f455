"""Intensity presets: how a volume's voxels become network inputs in [0, 1].

- ``mri``: per-volume min-max to [0, 1] (the ACDC / MMWHS setting).
- ``ct``: clip Hounsfield units to [-200, 250], then map to [0, 1] (the LiTS setting).
"""

from __future__ import annotations

from typing import Final

import numpy as np

PRESETS: Final = ("mri", "ct")
CT_WINDOW: Final = (-200.0, 250.0)


def normalize(array: np.ndarray, preset: str) -> np.ndarray:
    """Map a volume's intensities to float32 in [0, 1] according to ``preset``."""
    if preset == "mri":
        return _min_max(array.astype(np.float32, copy=False))
    if preset == "ct":
        low, high = CT_WINDOW
        clipped = np.clip(array.astype(np.float32, copy=False), low, high)
        return ((clipped - low) / (high - low)).astype(np.float32)
    raise ValueError(f"expected an intensity preset in {PRESETS}, got {preset!r}")


def _min_max(array: np.ndarray) -> np.ndarray:
    low = float(array.min()) if array.size else 0.0
    high = float(array.max()) if array.size else 0.0
    if high - low <= 0.0:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)
