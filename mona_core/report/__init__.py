"""Report stage of mona_core: PNG figures (overlays, training curves) drawn without pyplot or torch."""

from mona_core.report.figures import (
    DEFAULT_CLASS_NAMES,
    class_colour,
    save_loss_curve_png,
    save_overlay_png,
    save_slice_png,
    select_slices,
    write_png_atomic,
)

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "class_colour",
    "save_loss_curve_png",
    "save_overlay_png",
    "save_slice_png",
    "select_slices",
    "write_png_atomic",
]
