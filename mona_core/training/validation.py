"""Validation on whole volumes with a torch model: the same slicing and resizing as torch-free inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mona_core.data.slicing import PredictFn, predict_volume
from mona_core.metrics import MetricAccumulator, evaluate_case
from mona_core.training.slices import ValCase


def torch_predictor(model: nn.Module, device: torch.device) -> PredictFn:
    """Wrap a network as a numpy ``(N, 1, S, S) -> (N, C, S, S)`` function (inference mode, no grad)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch).to(device))
        return logits.float().cpu().numpy()  # type: ignore[no-any-return]

    return predict


def validate(
    model: nn.Module,
    cases: Sequence[ValCase],
    classes: Sequence[str],
    preset: str,
    size: int,
    device: torch.device,
    with_asd: bool = False,
    postprocess: str = "none",
) -> dict[str, Any]:
    """Segment each validation volume on its native grid (then ``postprocess`` its mask, as the exported model
    will) and aggregate DSC (and ASD when asked)."""
    was_training = model.training
    model.eval()
    predict = torch_predictor(model, device)
    accumulator = MetricAccumulator(classes)
    for case in cases:
        prediction = predict_volume(case.image, predict, preset, size, postprocess=postprocess)
        spacing = case.spacing_zyx if with_asd else None
        accumulator.add(
            evaluate_case(prediction, case.label, classes, spacing, case_id=case.case_id, with_asd=with_asd)
        )
    model.train(was_training)
    return accumulator.aggregate()
