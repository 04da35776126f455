"""The method layer: EMA and ramp-up arithmetic, batch composition, and each baseline training under the loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mona_core.data.dataset import load_dataset
from mona_core.data.splits import select_labelled
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.methods import ema_update, sigmoid_rampup
from mona_core.training.slices import SliceBank, sample_batch
from mona_core.training.trainer import train


def test_ema_update_hand_computed() -> None:
    teacher, student = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    ema_update(teacher, student, decay=0.99)
    assert teacher.weight.item() == pytest.approx(0.99 * 1.0 + 0.01 * 3.0)


def test_sigmoid_rampup_values() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_batches_mix_labelled_and_unlabelled_slices() -> None:
    bank = SliceBank(
        images=np.zeros((4, 1, 16, 16), np.float32),
        labels=np.ones((4, 16, 16), np.uint8),
        unlabelled=np.full((5, 1, 16, 16), 2.0, np.float32),
    )
    batch = sample_batch(bank, labelled=2, batch_size=6, rng=np.random.default_rng(0), augment=False)
    assert batch.images.shape == (2, 1, 16, 16) and batch.labels.shape == (2, 16, 16)
    assert batch.unlabelled.shape == (4, 1, 16, 16) and float(batch.unlabelled.max()) == 2.0
    assert batch.all_images.shape == (6, 1, 16, 16)
    only_labelled = SliceBank(bank.images, bank.labels, np.zeros((0, 1, 16, 16), np.float32))
    fallback = sample_batch(only_labelled, labelled=2, batch_size=6, rng=np.random.default_rng(0), augment=False)
    assert fallback.unlabelled.shape == (4, 1, 16, 16)  # labelled images stand in, without labels


def test_labelled_share_of_a_batch() -> None:
    assert TrainConfig(method="supervised", batch_size=6).labelled_per_batch == 6
    assert TrainConfig(method="mean_teacher", batch_size=6).labelled_per_batch == 3
    assert TrainConfig(method="cps", batch_size=6, labelled_batch_size=2).labelled_per_batch == 2
    with pytest.raises(ValueError, match="expected labelled_batch_size"):
        TrainConfig(batch_size=4, labelled_batch_size=5)
    with pytest.raises(ValueError, match="at least 2 unlabelled slices per batch for mona"):
        TrainConfig(method="mona", batch_size=2)


@pytest.mark.parametrize(
    ("method", "modules"),
    [("mean_teacher", {"model", "teacher"}), ("cps", {"model", "second"}), ("bcp", {"model", "teacher"})],
)
def test_semi_supervised_baselines_train_and_resume(
    phantom_dataset: Path, tmp_path: Path, method: str, modules: set[str]
) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=1, eligible=index.fully_labelled_patients("train"))
    config = TrainConfig(
        method=method, iterations=4, size=32, batch_size=4, val_every=2, checkpoint_every=2, log_every=1, device="cpu"
    )
    result = train(config, index, selection, tmp_path / "run")
    assert result.steps == 4 and result.best is not None
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["method"] == method and set(saved["modules"]) == modules
    assert all(torch.equal(saved["model"][k], saved["modules"]["model"][k]) for k in saved["model"])
    longer = train(config.with_overrides(iterations=6), index, selection, tmp_path / "run")
    assert longer.steps == 6
    loss_keys = set(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["history"][-1])
    assert {"mean_teacher": "loss_consistency", "cps": "loss_cps", "bcp": "loss_inward"}[method] in loss_keys


def test_mean_teacher_teacher_follows_the_student_by_ema(phantom_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=1, eligible=index.fully_labelled_patients("train"))
    config = TrainConfig(method="mean_teacher", iterations=2, size=32, batch_size=4, val_every=100, device="cpu")
    train(config, index, selection, tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["modules"]
    weight = "stem.0.weight"
    assert not torch.equal(saved["model"][weight], saved["teacher"][weight])
    assert torch.allclose(saved["model"][weight], saved["teacher"][weight], atol=0.05)
