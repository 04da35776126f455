"""Shared fixtures: a small phantom dataset written once per session; the ACDC folder when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from mona_core.data.phantoms import write_phantom_dataset

ACDC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
PHANTOM_SHAPE = (6, 64, 72)


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nnU-Net raw phantom dataset: 6 patients x 2 frames, volumes of shape (6, 64, 72).

    ``patient001``-``patient004``: labelled, split ``train``; ``patient005``: labelled, split ``val``;
    ``patient006``: no label files, split ``train``. Treat it as read-only: it is shared by the whole session.
    """
    root = tmp_path_factory.mktemp("phantom") / "Dataset900_Phantom"
    return write_phantom_dataset(
        root, n_patients=6, frames=2, seed=0, unlabelled_patients=1, val_patients=1, shape=PHANTOM_SHAPE
    )


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """The real ACDC nnU-Net raw folder (``../shared/data/acdc``); the test is skipped when it is absent."""
    if not (ACDC_ROOT / "dataset.json").is_file():
        pytest.skip(f"ACDC data not found at {ACDC_ROOT}")
    return ACDC_ROOT
