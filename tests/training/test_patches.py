"""Training on patches (``TrainConfig.patch``): each sampled slice is cut to a random window, its label at the same
window, the network trains on the windows, and validation and the saved model keep the whole slice size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mona_core.data.dataset import load_dataset
from mona_core.data.splits import select_labelled
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.methods.base import Batch
from mona_core.training.slices import SliceBank, random_windows
from mona_core.training.trainer import _new_state, _train_step, hold_on_device, train

CPU = torch.device("cpu")
SIDE = 32


def _coded_batch(count: int) -> Batch:
    """Slices whose pixel (y, x) holds ``y * SIDE + x`` (image) and ``(3y + x) % 4`` (label): a window's first
    pixel names its offset, and its label can be checked against the image it came with."""
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    code = torch.from_numpy((rows * SIDE + cols).astype(np.float32))
    label = torch.from_numpy(((3 * rows + cols) % 4).astype(np.int64))
    images = torch.stack([code + 10_000 * i for i in range(count)])[:, None]
    return Batch(images, label.expand(count, SIDE, SIDE).clone(), images[:2] + 50_000)


def test_windows_cut_each_label_with_its_image_at_offsets_spread_over_the_slice() -> None:
    patch, rng = 16, np.random.default_rng(0)
    offsets = []
    for _ in range(30):
        batch = random_windows(_coded_batch(3), patch, rng)
        assert batch.images.shape == (3, 1, patch, patch) and batch.labels.shape == (3, patch, patch)
        assert batch.unlabelled.shape == (2, 1, patch, patch)
        for i in range(3):
            image = batch.images[i, 0] - 10_000 * i
            y, x = divmod(int(image[0, 0]), SIDE)
            rows, cols = np.mgrid[y : y + patch, x : x + patch]
            assert torch.equal(image, torch.from_numpy((rows * SIDE + cols).astype(np.float32)))
            assert torch.equal(batch.labels[i], torch.from_numpy((3 * rows + cols) % 4))  # the image's window
            offsets.append((y, x))
    ys, xs = zip(*offsets, strict=True)
    assert min(ys) == 0 and max(ys) == SIDE - patch and min(xs) == 0 and max(xs) == SIDE - patch
    assert len(set(offsets)) > 40  # one offset per slice, not one per batch


def test_a_window_as_large_as_the_slice_is_the_slice_and_a_larger_one_is_refused() -> None:
    batch = _coded_batch(2)
    same = random_windows(batch, SIDE, np.random.default_rng(0))
    assert torch.equal(same.images, batch.images) and torch.equal(same.labels, batch.labels)
    with pytest.raises(ValueError, match="patch"):
        random_windows(batch, SIDE + 16, np.random.default_rng(0))


@pytest.mark.parametrize("patch", [24, 64, 0])
def test_config_refuses_a_patch_not_a_multiple_of_16_inside_the_slice(patch: int) -> None:
    with pytest.raises(ValueError, match="expected patch"):
        TrainConfig(size=48, patch=patch)


@pytest.mark.parametrize(("method", "on_device"), [("supervised", False), ("finetune", False), ("finetune", True)])
def test_the_network_trains_on_windows(method: str, on_device: bool) -> None:
    config = TrainConfig(
        method=method, size=SIDE, patch=16, batch_size=6, iterations=10, local_views=4, local_view_size=8,
        num_queries=16, num_negatives=32, memory_size=8, device="cpu", data_on_device=on_device,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (8, SIDE, SIDE)).astype(np.uint8)
    bank = SliceBank(rng.random((8, 1, SIDE, SIDE), dtype=np.float32), labels, rng.random((8, 1, SIDE, SIDE), "f4"))
    state = _new_state(config, 4, CPU)
    if on_device:
        hold_on_device(state, config, bank, CPU)
    seen: list[tuple[int, ...]] = []
    conv = next(m for m in state.method.eval_model().modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_pre_hook(lambda _module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    _train_step(state, config, bank, CPU)
    assert seen and set(seen) == {(16, 16)}


def test_a_patch_run_validates_and_saves_whole_slices(phantom_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    config = TrainConfig(size=32, patch=16, iterations=4, val_every=2, checkpoint_every=2, log_every=1, device="cpu")
    result = train(config, index, selection, tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["data"]["size"] == 32 and saved["train_config"]["patch"] == 16
    assert result.best is not None and 0.0 <= result.best["val_dice"] <= 1.0
