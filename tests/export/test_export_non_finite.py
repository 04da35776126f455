"""The parity check treats NaN as a failure: a diverged checkpoint exports no model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mona_core.export import ExportError, export_checkpoint
from tests.export.test_export import tiny_checkpoint


def _poisoned(value: float) -> dict[str, Any]:
    """A tiny checkpoint whose first convolution weight holds ``value`` at one position."""
    checkpoint = tiny_checkpoint()
    weights = {name: tensor.clone() for name, tensor in checkpoint["model"].items()}
    first = next(name for name, tensor in weights.items() if tensor.dim() == 4)
    weights[first].view(-1)[0] = value
    return {**checkpoint, "model": weights}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_fail_parity_and_leave_no_model_dir(tmp_path: Path, value: float) -> None:
    checkpoint = _poisoned(value)
    assert not all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values())
    with pytest.raises(ExportError, match=r"expected finite torch logits, got \d+ NaN or infinite"):
        export_checkpoint(checkpoint, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
