"""Checkpoints as plain dicts, saved atomically.

Keys (``FORMAT`` = "mona-checkpoint/1"):
- ``format``: the format tag; ``step``: iterations done;
- ``model_config``: ``UNetConfig.to_dict()``; ``model``: the state dict of the network that is evaluated/exported;
- ``optimizer``: optimiser state (absent in weights-only copies);
- ``train_config``: the training config as a dict; ``data``: ``{"classes", "preset", "size"}``;
- ``best``: ``{"step", "val_dice"}`` of the best validation so far (or None); ``rng``: RNG states for resume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT = "mona-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file, so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save({"format": FORMAT, **state}, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict and check its format tag."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint at {path}, found none")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"expected a {FORMAT} checkpoint, got {found!r} in {path}")
    return state


def checkpoint_for_export(run_dir: str | Path) -> Path:
    """The checkpoint a run is exported from: the best on validation, else the last."""
    directory = Path(run_dir) / "checkpoints"
    for name in (BEST, LAST):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"expected {BEST} or {LAST} under {directory}, found neither")
