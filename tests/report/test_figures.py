"""PNG figures: real PNGs of the expected size; edge cases (no foreground, no val rows) still draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from mona_core.report import save_loss_curve_png, save_overlay_png, select_slices
from mona_core.report.figures import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    _plot_losses,
    boundary,
    error_map_rgba,
    slice_dice,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, height: int, width: int, channels: int = 4) -> None:
    """A complete PNG of the given pixel size (RGBA from matplotlib, RGB from the raster painter), and no temporary
    file left beside it."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 2_000 < len(data) < 5_000_000
    assert imread(path).shape == (height, width, channels)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 24, 24)).astype(np.float32)
    label = np.zeros((6, 24, 24), dtype=np.uint8)
    label[1:5, 6:18, 6:18] = 1
    label[2:4, 9:15, 9:15] = 2
    label[3, 10:13, 10:13] = 3
    prediction = np.roll(label, 1, axis=2)
    return image, prediction, label


def test_overlay_with_label(tmp_path: Path) -> None:
    image, prediction, label = _volumes()
    out = save_overlay_png(image, prediction, tmp_path / "overlay.png", label=label, title="case 1")
    assert out == tmp_path / "overlay.png"
    # 24x24 slices enlarged 11x to 264 px; 4 columns of 264 + 8 gaps; title 26 + 3 rows of (20 + 264 + 8) + legend
    _check_png(out, height=26 + 3 * 292 + 26 + 8, width=8 + 4 * 272, channels=3)
    assert out.stat().st_mode & 0o777 == 0o644, "pictures are world-readable"


def test_overlay_without_foreground_or_label(tmp_path: Path) -> None:
    image, _, _ = _volumes()
    empty = np.zeros(image.shape, dtype=np.uint8)
    out = save_overlay_png(image, empty, tmp_path / "sub" / "empty.png", max_slices=2)
    _check_png(out, height=292 + 26 + 8, width=8 + 2 * 272, channels=3)


def test_overlay_accepts_a_2d_slice_and_rejects_mismatched_shapes(tmp_path: Path) -> None:
    image, prediction, _ = _volumes()
    _check_png(save_overlay_png(image[3], prediction[3], tmp_path / "slice.png"), height=326, width=280, channels=3)
    with pytest.raises(ValueError, match=r"expected prediction of the image's shape \(6, 24, 24\), got"):
        save_overlay_png(image, prediction[:, :10], tmp_path / "bad.png")


def test_select_slices_prefers_foreground() -> None:
    mask = np.zeros((6, 4, 4), dtype=np.uint8)
    mask[4, :, :] = 1
    mask[1, :2, :] = 1
    mask[2, 0, 0] = 1
    assert select_slices(mask, 2) == [1, 4]
    assert select_slices(mask, 10) == [1, 2, 4]
    assert select_slices(np.zeros((7, 2, 2), dtype=np.uint8), 3) == [0, 3, 6]


def test_loss_curve_with_and_without_val_rows(tmp_path: Path) -> None:
    history = [
        {"step": float(s), "loss": 1.0 / s, "loss_ce": 0.6 / s, "loss_dice": 0.4 / s, "lr": 0.01} for s in range(1, 30)
    ]
    _check_png(save_loss_curve_png(history, tmp_path / "a" / "no_val.png"), height=450, width=700)
    with_val = [{**row, "val_dice": 0.5} if row["step"] % 10 == 0 else row for row in history]
    _check_png(save_loss_curve_png(with_val, tmp_path / "b" / "val.png", title="run"), height=450, width=700)
    _check_png(save_loss_curve_png([], tmp_path / "c" / "empty.png"), height=450, width=700)


def test_loss_axis_is_log_only_when_all_losses_positive() -> None:
    ax = Figure().add_subplot()
    _plot_losses(ax, [{"step": 1.0, "loss": 0.5}, {"step": 2.0, "loss": 0.25}])
    assert ax.get_yscale() == "log"
    ax = Figure().add_subplot()
    _plot_losses(ax, [{"step": 1.0, "loss": 0.5}, {"step": 2.0, "loss": -0.1}])
    assert ax.get_yscale() == "linear"


def test_outlines_error_map_and_slice_dice() -> None:
    square = np.zeros((7, 7), dtype=bool)
    square[1:6, 1:6] = True
    ring = boundary(square)
    assert ring.sum() == 16 and not ring[2:5, 2:5].any(), "the outline is the square's border, not its inside"
    label = np.zeros((4, 4), dtype=np.uint8)
    label[0:2, 0:2] = 1
    prediction = np.zeros_like(label)
    prediction[0:2, 1:3] = 1
    errors = error_map_rgba(prediction, label)
    assert tuple(errors[0, 0, :3]) == FALSE_NEGATIVE and tuple(errors[0, 2, :3]) == FALSE_POSITIVE
    assert errors[0, 1, 3] == 0.0, "a correct pixel is not marked"
    assert slice_dice(prediction, label) == 0.5
    assert slice_dice(np.zeros_like(label), np.zeros_like(label)) is None
    assert slice_dice(np.zeros_like(label), label) == 0.0


def test_an_empty_prediction_is_said_so() -> None:
    from mona_core.report.figures import _slice_panels

    shown = np.zeros((8, 8))
    empty, truth = np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)
    panels = _slice_panels(shown, empty, truth, 0, empty_volume=True)
    assert panels[0].note == "no prediction in the volume" and "DSC 0.0" in panels[0].title
    assert _slice_panels(shown, empty, truth, 0, empty_volume=False)[0].note == "no prediction"
    assert _slice_panels(shown, truth, truth, 0, empty_volume=False)[0].note == ""
