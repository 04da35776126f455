"""Bidirectional Copy-Paste (BCP): the weighted loss, the mask, both mixing stages, the teacher's reset and EMA, and a
short reproducible run under the shared trainer."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mona_core.data.dataset import DatasetIndex, load_dataset
from mona_core.data.splits import LabelledSelection, select_labelled
from mona_core.losses import supervised_loss, weighted_dice_ce_loss
from mona_core.models import UNetConfig
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.methods import Batch, build_method
from mona_core.training.methods.bcp import BidirectionalCopyPaste, box_mask
from mona_core.training.trainer import train

# 4 iterations with the default bcp_pretrain_fraction 0.25: step 0 pre-trains, steps 1-3 self-train.
CONFIG = TrainConfig(method="bcp", iterations=4, size=32, batch_size=6, device="cpu")


def _method(**overrides: Any) -> BidirectionalCopyPaste:
    method = build_method(CONFIG.with_overrides(**overrides), UNetConfig(), torch.device("cpu"))
    assert isinstance(method, BidirectionalCopyPaste)
    return method


def _batch(labelled: int = 3, unlabelled: int = 3, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (labelled, 32, 32), generator=generator)
    images = labels[:, None].float() / 3 + 0.1 * torch.rand(labelled, 1, 32, 32, generator=generator)
    return Batch(images, labels, torch.rand(unlabelled, 1, 32, 32, generator=generator))


def _perturb(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def _pick(tensor: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor) -> None:
    """Assert ``tensor == inside ⊙ M + outside ⊙ (1 − M)``, written as arithmetic (not as the code's torch.where)."""
    m = mask.to(inside.dtype)
    assert torch.equal(tensor, inside * m + outside * (1 - m))


def test_weighted_dice_ce_hand_computed() -> None:
    # Pixel 0: logits (0, 0) -> p = (1/2, 1/2), label 0, weight 1. Pixel 1: logits (0, ln 3) -> p = (1/4, 3/4),
    # label 1, weight 1/2. CE_w = (ln 2 + 0.5 ln(4/3)) / 1.5.
    # Dice_0 = 2 (1 * 0.5) / ((1 * 0.25 + 0.5 * 0.0625) + 1) = 1 / 1.28125.
    # Dice_1 = 2 (0.5 * 0.75) / ((1 * 0.25 + 0.5 * 0.5625) + 0.5) = 0.75 / 1.03125.
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    target, weight = torch.tensor([[[0, 1]]]), torch.tensor([[[1.0, 0.5]]])
    parts = weighted_dice_ce_loss(logits, target, weight)
    ce = (math.log(2.0) + 0.5 * math.log(4.0 / 3.0)) / 1.5
    dice = ((1 - 1 / 1.28125) + (1 - 0.75 / 1.03125)) / 2
    assert parts["loss_ce"].item() == pytest.approx(ce, abs=1e-6)
    assert parts["loss_dice"].item() == pytest.approx(dice, abs=1e-4)
    assert parts["loss"].item() == pytest.approx(0.5 * (ce + dice), abs=1e-4)


def test_weights_are_relative_and_a_zero_weight_pixel_does_not_count() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=generator)
    target = torch.randint(0, 4, (2, 8, 8), generator=generator)
    ones = torch.ones(2, 8, 8)
    plain = supervised_loss(logits, target)
    for weight in (ones, 3.0 * ones):
        parts = weighted_dice_ce_loss(logits, target, weight)
        assert parts["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-5)
    ignored = ones.clone()
    ignored[0, 2, 3] = 0.0
    changed = logits.clone()
    changed[0, :, 2, 3] = torch.tensor([9.0, -9.0, 4.0, 0.0])
    before = weighted_dice_ce_loss(logits, target, ignored)["loss"].item()
    assert weighted_dice_ce_loss(changed, target, ignored)["loss"].item() == pytest.approx(before, rel=1e-6)
    assert weighted_dice_ce_loss(changed, target, ones)["loss"].item() != pytest.approx(plain["loss"].item(), rel=1e-3)


@pytest.mark.parametrize(
    ("ratio", "shape", "box"),
    [(2.0 / 3.0, (32, 32), (21, 21)), (2.0 / 3.0, (48, 40), (32, 26)), (0.5, (32, 48), (16, 24))],
)
def test_the_mask_is_one_box_with_sides_ratio_times_the_slice(
    ratio: float, shape: tuple[int, int], box: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(0)
    tops, lefts = set(), set()
    for _ in range(20):
        mask = box_mask(*shape, ratio, generator)
        rows, cols = mask.any(dim=1).nonzero().squeeze(1), mask.any(dim=0).nonzero().squeeze(1)
        assert (len(rows), len(cols), int(mask.sum())) == (box[0], box[1], box[0] * box[1])
        assert rows[-1] - rows[0] == box[0] - 1 and cols[-1] - cols[0] == box[1] - 1  # contiguous
        tops.add(int(rows[0]))
        lefts.add(int(cols[0]))
    assert len(tops) > 3 and len(lefts) > 3  # the position is drawn, along both axes


def test_the_method_draws_its_mask_with_the_config_ratio_and_seed() -> None:
    masks = [[method.mix(_batch(), 1).mask for _ in range(5)] for method in (_method(), _method(), _method(seed=1))]
    assert all(int(mask.sum()) == 21 * 21 for mask in masks[0])
    assert all(torch.equal(a, b) for a, b in zip(masks[0], masks[1], strict=True))
    assert not all(torch.equal(a, c) for a, c in zip(masks[0], masks[2], strict=True))
    assert int(_method(bcp_mask_ratio=0.5).mix(_batch(), 1).mask.sum()) == 16 * 16


def test_self_training_pastes_both_ways_with_one_mask_and_the_teachers_labels() -> None:
    method = _method(bcp_unlabelled_weight=0.25)
    _perturb(method.teacher, seed=1)  # so that teacher and student label differently
    batch, state = _batch(), method.generator.get_state()
    mixed = method.mix(batch, 1)
    with torch.no_grad():
        pseudo = method.teacher(batch.unlabelled).argmax(dim=1)
        assert not torch.equal(pseudo, method.model.eval()(batch.unlabelled).argmax(dim=1))
    p, n, m = mixed.pairs, 3, mixed.mask
    images, labels, unlabelled = batch.images, batch.labels, batch.unlabelled
    _pick(mixed.images[:n], images[p.labelled_a], unlabelled[p.unlabelled_a], m)  # inward
    _pick(mixed.images[n:], unlabelled[p.unlabelled_b], images[p.labelled_b], m)  # outward
    _pick(mixed.labels[:n], labels[p.labelled_a], pseudo[p.unlabelled_a], m)
    _pick(mixed.labels[n:], pseudo[p.unlabelled_b], labels[p.labelled_b], m)
    _pick(mixed.weights[:n], torch.ones(n, 32, 32), torch.full((n, 32, 32), 0.25), m)
    _pick(mixed.weights[n:], torch.full((n, 32, 32), 0.25), torch.ones(n, 32, 32), m)
    for a, b in ((p.labelled_a, p.labelled_b), (p.unlabelled_a, p.unlabelled_b)):
        assert sorted(a.tolist()) == [0, 1, 2] and bool((a != b).all())  # each slice once, never with itself
    method.generator.set_state(state)
    again = method.mix(batch, 1)  # the teacher is in eval mode: its pseudo-labels do not vary
    assert torch.equal(again.labels, mixed.labels) and torch.equal(again.images, mixed.images)


def test_the_student_learns_from_the_whole_mix_and_the_teacher_gets_no_gradient() -> None:
    method, batch = _method(), _batch()
    state = method.generator.get_state()
    mixed = method.mix(batch, 1)
    method.generator.set_state(state)
    method.model.eval()  # no dropout, so the loss can be recomputed
    with torch.no_grad():
        logits = method.model(mixed.images)
    inward = weighted_dice_ce_loss(logits[:3], mixed.labels[:3], mixed.weights[:3])["loss"]
    outward = weighted_dice_ce_loss(logits[3:], mixed.labels[3:], mixed.weights[3:])["loss"]
    seen: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        output.retain_grad()
        seen.update(input=inputs[0], output=output)

    method.model.register_forward_hook(keep)
    parts = method.step(batch, 1)
    assert torch.equal(seen["input"], mixed.images)
    assert parts["loss"].item() == pytest.approx((inward + outward).item(), rel=1e-5)
    assert parts["loss_inward"].item() == pytest.approx(inward.item(), rel=1e-5)
    parts["loss"].backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert not {id(p) for p in method.trainable()} & {id(p) for p in method.teacher.parameters()}
    gradient = seen["output"].grad
    assert gradient is not None
    from_unlabelled = torch.cat([(~mixed.mask).expand(3, -1, -1), mixed.mask.expand(3, -1, -1)])
    assert bool((gradient.abs().sum(dim=1)[from_unlabelled] > 0).all())  # pseudo-labelled pixels train it too


def test_the_teacher_becomes_the_student_after_pretraining_then_follows_it_by_ema() -> None:
    method = _method(iterations=8, ema_decay=0.9)  # 2 pre-training steps
    assert method.pretrain_steps == 2 and method.pretraining(1) and not method.pretraining(2)
    _perturb(method.model, seed=1)  # the student has moved during pre-training
    method.after_step(1)
    student = method.model.state_dict()
    assert all(torch.equal(tensor, student[name]) for name, tensor in method.teacher.state_dict().items())
    old = {name: p.detach().clone() for name, p in method.teacher.named_parameters()}
    _perturb(method.model, seed=2)
    method.after_step(2)
    current = dict(method.model.named_parameters())
    for name, parameter in method.teacher.named_parameters():
        torch.testing.assert_close(parameter, 0.9 * old[name] + 0.1 * current[name].detach())


def test_pretraining_copy_pastes_labelled_slices_only() -> None:
    method, batch = _method(), _batch()
    other = Batch(batch.images, batch.labels, batch.unlabelled.flip(-1) + 1.0)
    state = method.generator.get_state()
    mixed = method.mix(batch, 0)
    p = mixed.pairs
    _pick(mixed.images, batch.images[p.labelled_a], batch.images[p.labelled_b], mixed.mask)
    _pick(mixed.labels, batch.labels[p.labelled_a], batch.labels[p.labelled_b], mixed.mask)
    assert len(mixed.images) == 3 and bool((mixed.weights == 1).all()) and bool((p.labelled_a != p.labelled_b).all())
    method.model.eval()
    losses = {}
    for stage, step in (("pretrain", 0), ("self-train", 1)):
        for name, candidate in (("batch", batch), ("other", other)):
            method.generator.set_state(state)
            losses[stage, name] = method.step(candidate, step)["loss"].item()
    assert losses["pretrain", "batch"] == losses["pretrain", "other"]
    assert losses["self-train", "batch"] != losses["self-train", "other"]  # the comparison can tell


def test_a_single_labelled_slice_is_pasted_with_itself() -> None:
    method, batch = _method(), _batch(labelled=1, unlabelled=2)
    pretrain = method.mix(batch, 0)
    assert pretrain.pairs.labelled_a.tolist() == [0] == pretrain.pairs.labelled_b.tolist()
    assert torch.equal(pretrain.images, batch.images) and torch.equal(pretrain.labels, batch.labels)
    mixed = method.mix(batch, 1)  # two rows per direction: both unlabelled slices, the labelled one twice
    assert mixed.pairs.labelled_a.tolist() == [0, 0] == mixed.pairs.labelled_b.tolist()
    assert sorted(mixed.pairs.unlabelled_a.tolist()) == [0, 1] and len(mixed.images) == 4
    assert all(math.isfinite(method.step(batch, step)["loss"].item()) for step in (0, 1))


def test_bcp_needs_an_unlabelled_slice_and_sane_options() -> None:
    with pytest.raises(ValueError, match="at least 1 unlabelled slice per batch for bcp"):
        TrainConfig(method="bcp", batch_size=2, labelled_batch_size=2)
    for option, value in (("bcp_pretrain_fraction", 1.0), ("bcp_unlabelled_weight", -0.1), ("bcp_mask_ratio", 1.0)):
        with pytest.raises(ValueError, match=f"expected {option}"):
            TrainConfig(method="bcp", **{option: value})  # type: ignore[arg-type]
    assert TrainConfig(method="bcp", bcp_pretrain_fraction=0.0).bcp_pretrain_fraction == 0.0


def _data(phantom_dataset: Path) -> tuple[DatasetIndex, LabelledSelection]:
    index = load_dataset(phantom_dataset)
    eligible = index.fully_labelled_patients("train")
    return index, select_labelled(index.patients("train"), n_patients=1, eligible=eligible)


def _modules(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["modules"]  # type: ignore[no-any-return]


def test_bcp_trains_under_the_loop_reproducibly_and_resumes_exactly(phantom_dataset: Path, tmp_path: Path) -> None:
    index, selection = _data(phantom_dataset)
    config = CONFIG.with_overrides(batch_size=4, val_every=2, checkpoint_every=2, log_every=1)
    result = train(config, index, selection, tmp_path / "a")
    assert result.steps == 4 and result.best is not None and (tmp_path / "a" / "checkpoints" / "best.pt").is_file()
    saved = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert saved["method"] == "bcp" and set(saved["modules"]) == {"model", "teacher"}
    history = saved["history"]
    assert "loss_inward" not in history[0] and all("loss_inward" in row for row in history[1:])
    assert all(math.isfinite(row["loss"]) for row in history)
    calls = itertools.count()
    stopped = train(config, index, selection, tmp_path / "b", should_stop=lambda: next(calls) >= 3)
    assert stopped.stopped and stopped.steps == 3
    train(config, index, selection, tmp_path / "b")
    first, second = _modules(tmp_path / "a"), _modules(tmp_path / "b")
    for name, state in first.items():
        assert all(torch.equal(tensor, second[name][key]) for key, tensor in state.items()), name
