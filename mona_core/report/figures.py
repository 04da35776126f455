"""PNG figures for reports: segmentation overlays and training curves.

People judge a segmentation faster from a picture than from a table, so every run and prediction can carry
one. Matplotlib's object API (``Figure`` + ``FigureCanvasAgg``) is used instead of ``pyplot``: no global
state, no display backend, safe in worker and API processes. Files are written atomically (temporary file,
then replace), so a reader never sees half a PNG.

Arrays are numpy ``(z, y, x)``: one panel per selected z slice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mona_core.report.raster import Panel, render_grid, write_atomically

logger = logging.getLogger(__name__)

DEFAULT_CLASS_NAMES: tuple[str, ...] = ("background", "RV", "Myo", "LV")
OVERLAY_ALPHA = 0.45
DPI = 100
_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.62, 0.00),  # orange            (Okabe & Ito's colour-blind-safe palette)
    (0.34, 0.71, 0.91),  # sky blue
    (0.00, 0.62, 0.45),  # bluish green
    (0.94, 0.89, 0.26),  # yellow
    (0.80, 0.47, 0.65),  # reddish purple
    (0.00, 0.45, 0.70),  # blue
    (0.84, 0.37, 0.00),  # vermillion
)
FALSE_POSITIVE = (0.84, 0.37, 0.00)  # vermillion: predicted, not in the label
FALSE_NEGATIVE = (0.00, 0.45, 0.70)  # blue: in the label, not predicted
Colour = tuple[float, float, float]
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def class_colour(index: int) -> tuple[float, float, float]:
    """RGB colour of foreground class ``index`` (1-based), cycling through a fixed palette."""
    return _PALETTE[(index - 1) % len(_PALETTE)]


def _as_volume(array: np.ndarray, name: str) -> np.ndarray:
    """Accept a ``(z, y, x)`` volume or a ``(y, x)`` slice (made a one-slice volume)."""
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"expected {name} as a 3D (z, y, x) or 2D (y, x) array, got shape {array.shape}")
    return array


def select_slices(mask: np.ndarray, max_slices: int) -> list[int]:
    """Up to ``max_slices`` z indices with the most foreground, in z order; evenly spaced if there is none."""
    if max_slices < 1:
        raise ValueError(f"expected max_slices >= 1, got {max_slices}")
    counts = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    n = min(max_slices, mask.shape[0])
    if counts.max(initial=0) == 0:
        return sorted({round(v) for v in np.linspace(0, mask.shape[0] - 1, n).tolist()})
    ranked = np.argsort(-counts, kind="stable")[:n]
    return sorted(int(z) for z in ranked if counts[z] > 0)


def _normalise(image: np.ndarray) -> np.ndarray:
    """Window an intensity volume to [0, 1] between its 1st and 99th percentiles, for display only."""
    finite = np.nan_to_num(image.astype(np.float64))
    low, high = np.percentile(finite, [1.0, 99.0])
    if high <= low:
        return np.zeros_like(finite)
    windowed: np.ndarray = np.clip((finite - low) / (high - low), 0.0, 1.0)
    return windowed


def _overlay_rgba(mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGBA image ``(y, x, 4)``: each foreground class in its colour, translucent; background transparent."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.float64)
    for index in np.unique(mask):
        if index <= 0:
            continue
        rgba[mask == index] = (*class_colour(int(index)), alpha)
    return rgba


def boundary(region: np.ndarray) -> np.ndarray:
    """The pixels of a 2D boolean ``region`` that touch a pixel outside it (4-neighbourhood): its outline."""
    padded = np.pad(region, 1, mode="constant", constant_values=False)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    outline: np.ndarray = region & ~inner
    return outline


def _contours_rgba(mask: np.ndarray, fill: float = 0.15) -> np.ndarray:
    """Each class as an opaque outline in its colour over a faint fill, so boundaries stay visible."""
    rgba = _overlay_rgba(mask, alpha=fill)
    for index in np.unique(mask):
        if index > 0:
            rgba[boundary(mask == index)] = (*class_colour(int(index)), 1.0)
    return rgba


def error_map_rgba(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Where the prediction is wrong: false positives (a foreground class the label does not have there) and false
    negatives (label foreground predicted as another class or background), each in its own colour."""
    rgba = np.zeros((*prediction.shape, 4), dtype=np.float64)
    wrong = prediction != label
    rgba[wrong & (label > 0)] = (*FALSE_NEGATIVE, 0.85)
    rgba[wrong & (prediction > 0) & (label == 0)] = (*FALSE_POSITIVE, 0.85)
    return rgba


def slice_dice(prediction: np.ndarray, label: np.ndarray) -> float | None:
    """Mean DSC over the foreground classes present in either 2D slice, or None when neither has foreground."""
    scores = []
    for index in np.union1d(np.unique(prediction), np.unique(label)):
        if index <= 0:
            continue
        pred, truth = prediction == index, label == index
        scores.append(2.0 * float(np.count_nonzero(pred & truth)) / float(pred.sum() + truth.sum()))
    return float(np.mean(scores)) if scores else None


def _legend_names(class_names: Sequence[str], masks: Sequence[np.ndarray]) -> list[str]:
    """One name per foreground class index: the named ones, plus any unnamed index present in the masks."""
    highest = max([len(class_names) - 1, *(int(m.max(initial=0)) for m in masks)])
    return [class_names[i] if i < len(class_names) else f"class {i}" for i in range(1, highest + 1)]


def write_png_atomic(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to ``path`` through a temporary file in the same folder, then replace atomically."""
    FigureCanvasAgg(fig)
    target = write_atomically(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=DPI))
    logger.debug("wrote %s", target)
    return target


def _overlay_rows(
    image: np.ndarray, prediction: np.ndarray, label: np.ndarray | None
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Check shapes and return the image volume and the (name, mask) rows: prediction, then label if given."""
    volume = _as_volume(image, "image")
    rows = [("prediction", _as_volume(prediction, "prediction"))]
    if label is not None:
        rows.append(("label", _as_volume(label, "label")))
    for name, mask in rows:
        if mask.shape != volume.shape:
            raise ValueError(f"expected {name} of the image's shape {volume.shape}, got {mask.shape}")
    return volume, rows


def _legend_items(class_names: Sequence[str], masks: Sequence[np.ndarray], errors: bool) -> list[tuple[str, Colour]]:
    names = _legend_names(class_names, masks)
    items = [(name, class_colour(number)) for number, name in enumerate(names, start=1)]
    if errors:
        items += [
            ("false positive (predicted, not labelled)", FALSE_POSITIVE),
            ("false negative (labelled, missed or another class)", FALSE_NEGATIVE),
        ]
    return items


def _slice_panels(
    shown: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None, z: int, empty_volume: bool
) -> list[Panel]:
    """The panels of one slice: the prediction's outlines and, with a label, the label's outlines and the errors."""
    note = "no prediction in the volume" if empty_volume else ("" if np.any(predicted > 0) else "no prediction")
    if truth is None:
        return [Panel(shown, [_contours_rgba(predicted)], f"prediction, z={z}", note)]
    dice = slice_dice(predicted, truth)
    score = "DSC n/a (empty)" if dice is None else f"DSC {100 * dice:.1f}"
    return [
        Panel(shown, [_contours_rgba(predicted)], f"prediction, z={z}, {score}", note),
        Panel(shown, [_contours_rgba(truth)], f"label, z={z}"),
        Panel(shown, [error_map_rgba(predicted, truth)], f"errors, z={z}"),
    ]


def save_overlay_png(
    image: np.ndarray,
    prediction: np.ndarray,
    path: str | Path,
    label: np.ndarray | None = None,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    max_slices: int = 4,
    title: str | None = None,
) -> Path:
    """Save a grid of slices that shows where a segmentation is right and wrong.

    Without a label: one row, the image with each predicted class as an outline over a faint fill. With a label:
    row 1 the prediction's outlines, row 2 the label's, row 3 an error map (false positives and false negatives in
    their own colours); each column's title carries that slice's DSC (mean over the classes on the slice). A slice
    (or a volume) with no predicted foreground says "no prediction" instead of looking merely empty. Colours are
    Okabe & Ito's colour-blind-safe palette. Painted directly into pixels (``raster``): tens of milliseconds.

    ``image`` is ``(z, y, x)`` float, ``prediction``/``label`` class-index ``(z, y, x)``. The slices shown
    are the ``max_slices`` with the most foreground in the label (or, without a label, in the prediction).
    """
    volume, rows = _overlay_rows(image, prediction, label)
    predicted, truth = rows[0][1], (rows[1][1] if len(rows) > 1 else None)
    slices = select_slices(truth if truth is not None else predicted, max_slices)
    shown = _normalise(volume)
    empty_volume = not bool(np.any(predicted > 0))
    columns = [
        _slice_panels(shown[z], predicted[z], truth[z] if truth is not None else None, z, empty_volume) for z in slices
    ]
    grid = [[column[r] for column in columns] for r in range(len(columns[0]))]
    legend = _legend_items(class_names, [m for _, m in rows], errors=truth is not None)
    return render_grid(grid, path, legend, title)


def save_slice_png(
    image: np.ndarray,
    prediction: np.ndarray,
    z: int,
    path: str | Path,
    label: np.ndarray | None = None,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> Path:
    """One slice ``z`` of a volume side by side: the prediction's outlines and, with a label, the label's outlines
    and the error map, titled with the slice's DSC (the frames of the console's slice viewer)."""
    volume, rows = _overlay_rows(image, prediction, label)
    if not 0 <= z < volume.shape[0]:
        raise ValueError(f"expected a slice index in 0..{volume.shape[0] - 1}, got {z}")
    predicted, truth = rows[0][1], (rows[1][1] if len(rows) > 1 else None)
    shown = _normalise(volume)[z]
    panels = _slice_panels(shown, predicted[z], truth[z] if truth is not None else None, z, False)
    legend = _legend_items(class_names, [m for _, m in rows], errors=truth is not None)
    return render_grid([panels], path, legend)


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have a finite ``key``; a row without "step" uses its index."""
    steps: list[float] = []
    values: list[float] = []
    for index, row in enumerate(history):
        value = row.get(key)
        if value is not None and math.isfinite(float(value)):
            steps.append(float(row.get("step", index)))
            values.append(float(value))
    return steps, values


def _loss_keys(history: Sequence[Mapping[str, float]]) -> list[str]:
    """Keys starting with "loss", in order of first appearance."""
    return list(dict.fromkeys(key for row in history for key in row if key.startswith("loss")))


def _plot_losses(ax: Axes, history: Sequence[Mapping[str, float]]) -> list[Line2D]:
    """Every loss series against step; log y when all plotted values are positive."""
    lines: list[Line2D] = []
    plotted: list[float] = []
    for key in _loss_keys(history):
        steps, values = _series(history, key)
        if values:
            lines += ax.plot(steps, values, label=key, linewidth=1.5 if key == "loss" else 1.0)
            plotted += values
    if plotted and min(plotted) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return lines


def _plot_val_dice(ax: Axes, history: Sequence[Mapping[str, float]]) -> list[Line2D]:
    """Validation Dice on a second y axis, only when some rows carry it."""
    steps, values = _series(history, "val_dice")
    if not values:
        return []
    twin = ax.twinx()
    lines = twin.plot(steps, values, "o-", color="black", label="val_dice", markersize=4)
    twin.set_ylim(0.0, 1.0)
    twin.set_ylabel("validation Dice")
    return lines


def save_loss_curve_png(history: Sequence[Mapping[str, float]], path: str | Path, title: str | None = None) -> Path:
    """Save the training curves: every ``loss*`` key against step, and ``val_dice`` on a second axis.

    ``history`` rows look like ``{"step": 10, "loss": 0.9, "loss_ce": 0.5, "lr": 0.01, "val_dice": 0.7}``;
    keys may be missing on some rows (validation runs only now and then). An empty history gives a
    placeholder figure.
    """
    fig = Figure(figsize=(7.0, 4.5), dpi=DPI)
    ax = fig.add_subplot()
    lines = _plot_losses(ax, history) + _plot_val_dice(ax, history)
    if lines:
        ax.legend(handles=lines, loc="upper right", fontsize=8)
        ax.grid(True, alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no training history yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title or "training curves")
    fig.tight_layout()
    return write_png_atomic(fig, path)


def save_study_png(cells: Sequence[Mapping[str, object]], path: str | Path, title: str | None = None) -> Path:
    """Label efficiency: mean DSC (%, on 0-100) and mean ASD against the labelled ratio, one line per method.

    Lines differ by colour, marker and dash, so overlapping methods stay distinguishable; a panel without a defined
    value (e.g. ASD when no case had both masks) says "n/a" instead of showing an empty axis.
    ``cells`` are study cells as dicts with ``method``, ``ratio`` and ``mean`` (``{"dice", "asd"}``, DSC as a
    fraction).
    """
    fig = Figure(figsize=(9.0, 4.0), dpi=DPI)
    dice_ax, asd_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    methods = sorted({str(cell["method"]) for cell in cells})
    any_asd = False
    for number, method in enumerate(methods):
        rows = sorted((c for c in cells if c["method"] == method), key=lambda c: float(c["ratio"]))  # type: ignore[arg-type]
        ratios = [100 * float(c["ratio"]) for c in rows]  # type: ignore[arg-type]
        means = [c["mean"] for c in rows]
        dice = [np.nan if m["dice"] is None else 100 * m["dice"] for m in means]  # type: ignore[index]
        asd = [np.nan if m["asd"] is None else m["asd"] for m in means]  # type: ignore[index]
        any_asd = any_asd or not all(np.isnan(asd))
        style: dict[str, Any] = {
            "marker": MARKERS[number % len(MARKERS)],
            "linestyle": LINE_STYLES[number % len(LINE_STYLES)],
            "color": class_colour(number + 1),
            "markersize": 7 - number % 3,
            "label": method,
        }
        dice_ax.plot(ratios, dice, **style)
        asd_ax.plot(ratios, asd, **style)
    dice_ax.set_ylim(0, 100)
    if not any_asd:
        asd_ax.text(
            0.5, 0.5, "ASD n/a\n(no case with both masks)", ha="center", va="center", transform=asd_ax.transAxes
        )
        asd_ax.set_yticks([])
    for ax, label in ((dice_ax, "mean DSC (%)"), (asd_ax, "mean ASD")):
        ax.set_xlabel("labelled patients (%)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    dice_ax.legend(fontsize=8)
    fig.suptitle(title or "label efficiency")
    fig.tight_layout()
    return write_png_atomic(fig, path)
