"""Segmentation pictures drawn straight into pixels (numpy + Pillow), not through matplotlib.

An overlay is a grid of slices with colour layers on top: composing those arrays and writing one PNG takes a few
tens of milliseconds, where matplotlib's artist machinery took half a second per picture. That matters in the API,
where every segmentation with a label draws one while others wait for the CPU. The look (outlines, error map,
per-slice DSC in the titles, a "no prediction" note, the legend) is defined in ``figures``; this module only
paints it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TARGET_PX = 256
"""A slice is enlarged by a whole factor (nearest neighbour) until its longer side reaches about this many pixels."""
GAP = 8
TITLE_PX = 20
SUPTITLE_PX = 26
LEGEND_PX = 26
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
FILE_MODE = 0o644
"""Pictures are for people and other services to read: world-readable, like any published report."""


@dataclass(frozen=True)
class Panel:
    """One slice to paint: the grey image in [0, 1], RGBA layers in [0, 1] drawn in order, a title and a note."""

    image: np.ndarray
    layers: Sequence[np.ndarray]
    title: str
    note: str = ""


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def compose(panel: Panel) -> np.ndarray:
    """The panel as RGB uint8: the grey image with each RGBA layer alpha-blended over it, enlarged."""
    rgb = np.repeat(panel.image[..., np.newaxis], 3, axis=2).astype(np.float32)
    for layer in panel.layers:
        alpha = layer[..., 3:4].astype(np.float32)
        rgb = rgb * (1.0 - alpha) + layer[..., :3].astype(np.float32) * alpha
    scale = max(1, round(TARGET_PX / max(rgb.shape[0], rgb.shape[1])))
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    pixels: np.ndarray = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return pixels


def _centred_text(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str, size: int) -> None:
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = box[0] + (box[2] - box[0] - (right - left)) // 2
    y = box[1] + (box[3] - box[1] - (bottom - top)) // 2
    draw.text((x, y), text, fill=TEXT, font=font)


def _note(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str) -> None:
    font = _font(13)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    x = box[0] + (box[2] - box[0] - width) // 2
    y = box[1] + (box[3] - box[1] - height) // 2
    draw.rectangle((x - 6, y - 4, x + width + 6, y + height + 6), fill=(0, 0, 0))
    draw.text((x, y), text, fill=(255, 255, 255), font=font)


def render_grid(
    rows: Sequence[Sequence[Panel]],
    path: str | Path,
    legend: Sequence[tuple[str, tuple[float, float, float]]],
    title: str | None = None,
) -> Path:
    """Paint ``rows`` of panels (titles above, notes across) with a legend band and an optional title; write the
    PNG atomically (``write_atomically``)."""
    tiles = [[compose(panel) for panel in row] for row in rows]
    cell_h = max(tile.shape[0] for row in tiles for tile in row)
    cell_w = max(tile.shape[1] for row in tiles for tile in row)
    columns = max(len(row) for row in tiles)
    top = SUPTITLE_PX if title else 0
    width = GAP + columns * (cell_w + GAP)
    height = top + len(rows) * (TITLE_PX + cell_h + GAP) + LEGEND_PX + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        _centred_text(draw, (0, 0, width, SUPTITLE_PX), title, 16)
    for r, (row, row_tiles) in enumerate(zip(rows, tiles, strict=True)):
        y = top + r * (TITLE_PX + cell_h + GAP)
        for c, (panel, tile) in enumerate(zip(row, row_tiles, strict=True)):
            x = GAP + c * (cell_w + GAP)
            _centred_text(draw, (x, y, x + cell_w, y + TITLE_PX), panel.title, 12)
            canvas.paste(Image.fromarray(tile), (x, y + TITLE_PX))
            if panel.note:
                _note(draw, (x, y + TITLE_PX, x + tile.shape[1], y + TITLE_PX + tile.shape[0]), panel.note)
    _legend(draw, (0, height - LEGEND_PX - GAP // 2, width, height - GAP // 2), legend)
    return write_atomically(Path(path), lambda handle: canvas.save(handle, format="PNG", compress_level=3))


def _legend(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], items: Sequence[tuple[str, tuple[float, float, float]]]
) -> None:
    font = _font(12)
    widths = [14 + 6 + int(draw.textlength(name, font=font)) + 18 for name, _ in items]
    x = box[0] + max(GAP, (box[2] - box[0] - sum(widths)) // 2)
    middle = (box[1] + box[3]) // 2
    for (name, colour), width in zip(items, widths, strict=True):
        fill = (round(255 * colour[0]), round(255 * colour[1]), round(255 * colour[2]))
        draw.rectangle((x, middle - 7, x + 14, middle + 7), fill=fill)
        draw.text((x + 20, middle - 8), name, fill=TEXT, font=font)
        x += width


def write_atomically(target: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file through a temporary one in the same folder (``write`` fills it), mode 0644, then replace the
    target atomically: a reader never sees half a picture."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        tmp.chmod(FILE_MODE)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
