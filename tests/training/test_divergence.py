"""Divergence stops training: an exploding or non-finite loss, or non-finite weights, raise ``TrainingDiverged``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from mona_core.data.dataset import load_dataset
from mona_core.data.splits import select_labelled
from mona_core.training import performance
from mona_core.training.config import TrainConfig
from mona_core.training.errors import TrainingDiverged
from mona_core.training.trainer import train

QUIET = {"val_every": 1000, "checkpoint_every": 1000, "log_every": 1, "device": "cpu"}
SMALL = TrainConfig(iterations=40, size=32, batch_size=2, **QUIET)  # type: ignore[arg-type]


def _run(phantom_dataset: Path, tmp_path: Path, config: TrainConfig) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    train(config, index, selection, tmp_path / "run")


def test_lr_10_explodes_and_stops_with_a_clear_error(phantom_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as caught:
        _run(phantom_dataset, tmp_path, TrainConfig(**{**SMALL.to_dict(), "lr": 10.0}))
    message = str(caught.value)
    assert re.fullmatch(r"training diverged at step \d+: loss_\w+ = \S+ > max_loss 1e\+06 \(lr 10\)", message)
    assert isinstance(caught.value, ValueError) and caught.value.value > 1e6 and caught.value.step < 40
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_non_finite_loss_stops_at_its_step(
    phantom_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = performance.method_step

    def inf_at_third(*args: Any) -> dict[str, torch.Tensor]:
        parts = real_step(*args)
        return {name: value * float("inf") for name, value in parts.items()} if args[2] == 2 else parts

    monkeypatch.setattr("mona_core.training.trainer.method_step", inf_at_third)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 3: loss_ce = inf \(lr 0\.01\)$"):
        _run(phantom_dataset, tmp_path, SMALL)


def test_non_finite_weights_with_a_finite_loss_stop_the_run(
    phantom_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step's loss is finite but its update leaves a NaN weight: the end-of-run weight check sees it."""
    real_build = performance.build_optimizer

    def poisoning(params: Any, config: TrainConfig) -> torch.optim.SGD:
        optimizer = real_build(params, config)
        real_step = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            result = real_step(*args, **kwargs)
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].view(-1)[0] = float("nan")
            return result

        optimizer.step = step  # type: ignore[method-assign]
        return optimizer

    monkeypatch.setattr("mona_core.training.trainer.build_optimizer", poisoning)
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 1: weights of model \(\S+\) = nan"):
        _run(phantom_dataset, tmp_path, TrainConfig(**{**SMALL.to_dict(), "iterations": 1}))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_max_loss_is_a_bounded_config_field() -> None:
    assert TrainConfig().max_loss == 1e6
    for bad in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="expected max_loss"):
            TrainConfig(max_loss=bad)
