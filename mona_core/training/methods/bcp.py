"""Bidirectional Copy-Paste (BCP; Bai et al., CVPR 2023) under the shared trainer.

A student UNet and an EMA teacher. One mask M per step: 1 inside a rectangle whose sides are ``bcp_mask_ratio``
(the paper's β = 2/3) of the slice's, at a random position, 0 elsewhere. Two stages in one run:

1. Pre-training, the first ``bcp_pretrain_fraction`` of the iterations (the paper's 10k of 40k on ACDC): copy-paste
   between labelled slices only, X = X_a ⊙ M + X_b ⊙ (1 − M) with the labels mixed the same way, from scratch.
   Unlabelled slices are not used. At the end of it the teacher is reset to a copy of the student.
2. Self-training: a labelled crop is pasted into an unlabelled slice ("inward") and an unlabelled crop into a
   labelled slice ("outward"), X_in = X_l1 ⊙ M + X_u1 ⊙ (1 − M) and X_out = X_u2 ⊙ M + X_l2 ⊙ (1 − M). Their
   targets mix the ground truth with the teacher's argmax on the plain unlabelled slices by the same M; pixels that
   come from an unlabelled slice weigh ``bcp_unlabelled_weight`` (α = 0.5), the others 1. Loss = the weighted
   Dice + CE of the inward batch + that of the outward batch; the teacher follows the student by EMA.

Where this differs from the paper: the paper's largest-connected-component clean-up of the pseudo-labels is
skipped (plain argmax); the weighting is one per-pixel-weighted Dice + CE over each mixed slice
(``weighted_dice_ce_loss``, weighted averages) instead of Dice and CE computed separately on the two regions and
summed with weights 1 and α; each labelled and each unlabelled slice appears once per direction (n = max(L, U) pairs
per direction, a single labelled slice pairs with itself) rather than the batch being cut into fixed halves; and
both stages share the trainer's optimiser, learning-rate schedule and checkpoints (the paper restarts for
self-training). Every random draw (mask position, pairing) uses the method's own generator, seeded with
``config.seed``; the teacher runs in eval mode (``frozen_copy``), so its pseudo-labels are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mona_core.losses import weighted_dice_ce_loss
from mona_core.models import UNet, UNetConfig, build_model
from mona_core.training.config import TrainConfig
from mona_core.training.methods.base import Batch, ema_update, frozen_copy, load_generator_state


@dataclass(frozen=True)
class Pairing:
    """Which slices row i of each direction mixes: (n,) int64 indices into the batch's labelled / unlabelled slices.

    Pre-training pastes ``labelled_a`` into ``labelled_b`` (the unlabelled indices are empty); self-training pastes
    ``labelled_a`` into ``unlabelled_a`` (inward) and ``unlabelled_b`` into ``labelled_b`` (outward).
    """

    labelled_a: torch.Tensor
    labelled_b: torch.Tensor
    unlabelled_a: torch.Tensor
    unlabelled_b: torch.Tensor


@dataclass(frozen=True)
class CopyPasteBatch:
    """What the student sees and learns from in one step.

    ``images`` (N, 1, H, W), ``labels`` (N, H, W) int64 and per-pixel ``weights`` (N, H, W); in self-training the
    first N / 2 rows are inward, the rest outward. ``mask`` (H, W) bool is M, shared by every row and the targets.
    """

    images: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    mask: torch.Tensor
    pairs: Pairing


def box_mask(height: int, width: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """M: (H, W) bool, True inside one int(ratio * H) x int(ratio * W) rectangle at a uniformly drawn position.

    Drawn on ``generator``'s device with ``generator`` (no host sync: the position stays a tensor).
    """
    device = generator.device
    box_h, box_w = max(1, int(ratio * height)), max(1, int(ratio * width))
    top = torch.randint(0, height - box_h + 1, (1,), generator=generator, device=device)
    left = torch.randint(0, width - box_w + 1, (1,), generator=generator, device=device)
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    inside_rows = (rows >= top) & (rows < top + box_h)
    inside_cols = (cols >= left) & (cols < left + box_w)
    return inside_rows[:, None] & inside_cols[None, :]


def cyclic_pairs(count: int, rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows,) indices ``a`` and ``b`` into ``count`` slices: a random order read cyclically, ``b`` the successor of
    ``a`` in it. So every slice is an ``a`` (and a ``b``) once when rows == count, and a != b whenever count >= 2; a
    single slice is paired with itself."""
    order = torch.randperm(count, generator=generator, device=generator.device)
    position = torch.arange(rows, device=generator.device)
    return order[position % count], order[(position + 1) % count]


def paste(foreground: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """F ⊙ M + B ⊙ (1 − M) for images (N, 1, H, W) or labels (N, H, W), with M (H, W) bool broadcast."""
    return torch.where(mask, foreground, background)


def labelled_mix(batch: Batch, mask: torch.Tensor, pairs: Pairing) -> CopyPasteBatch:
    """Pre-training: labelled crop into labelled slice, labels mixed alike, every pixel of weight 1."""
    a, b = pairs.labelled_a, pairs.labelled_b
    labels = paste(batch.labels[a], batch.labels[b], mask)
    weights = torch.ones(labels.shape, device=labels.device)
    return CopyPasteBatch(paste(batch.images[a], batch.images[b], mask), labels, weights, mask, pairs)


def bidirectional_mix(
    batch: Batch, pseudo: torch.Tensor, mask: torch.Tensor, pairs: Pairing, unlabelled_weight: float
) -> CopyPasteBatch:
    """Self-training: inward rows then outward rows; ``pseudo`` (U, H, W) are the teacher's labels of ``unlabelled``.

    Pixels taken from an unlabelled slice (outside M inward, inside M outward) weigh ``unlabelled_weight``.
    """
    images, labels, unlabelled = batch.images, batch.labels, batch.unlabelled
    la, lb, ua, ub = pairs.labelled_a, pairs.labelled_b, pairs.unlabelled_a, pairs.unlabelled_b
    inward = paste(images[la], unlabelled[ua], mask), paste(labels[la], pseudo[ua], mask)
    outward = paste(unlabelled[ub], images[lb], mask), paste(pseudo[ub], labels[lb], mask)
    low = torch.full(mask.shape, unlabelled_weight, device=mask.device)
    high = torch.ones(mask.shape, device=mask.device)
    n = len(la)
    weights = torch.cat([paste(high, low, mask).expand(n, -1, -1), paste(low, high, mask).expand(n, -1, -1)])
    return CopyPasteBatch(torch.cat([inward[0], outward[0]]), torch.cat([inward[1], outward[1]]), weights, mask, pairs)


class BidirectionalCopyPaste:
    """BCP: supervised copy-paste pre-training, then bidirectional copy-paste self-training with an EMA teacher."""

    name = "bcp"
    augments_unlabelled = False

    def __init__(self, config: TrainConfig, model_config: UNetConfig, device: torch.device) -> None:
        self.config = config
        self.model = build_model(model_config).to(device)
        self.teacher = frozen_copy(self.model)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.pretrain_steps = round(config.bcp_pretrain_fraction * config.iterations)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "teacher": self.teacher}

    def trainable(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def eval_model(self) -> UNet:
        return self.model

    def pretraining(self, step: int) -> bool:
        """Steps 0 .. pretrain_steps - 1 are the supervised copy-paste stage."""
        return step < self.pretrain_steps

    def mix(self, batch: Batch, step: int) -> CopyPasteBatch:
        """This step's mixed batch: labelled-only while pre-training, bidirectional (with pseudo-labels) after."""
        height, width = batch.images.shape[-2:]
        mask = box_mask(height, width, self.config.bcp_mask_ratio, self.generator)
        n_labelled, n_unlabelled = len(batch.images), len(batch.unlabelled)
        if self.pretraining(step):
            la, lb = cyclic_pairs(n_labelled, n_labelled, self.generator)
            empty = la[:0]
            return labelled_mix(batch, mask, Pairing(la, lb, empty, empty))
        rows = max(n_labelled, n_unlabelled)
        la, lb = cyclic_pairs(n_labelled, rows, self.generator)
        ua, ub = cyclic_pairs(n_unlabelled, rows, self.generator)
        with torch.no_grad():
            pseudo = self.teacher(batch.unlabelled).argmax(dim=1)
        return bidirectional_mix(batch, pseudo, mask, Pairing(la, lb, ua, ub), self.config.bcp_unlabelled_weight)

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        mixed = self.mix(batch, step)
        logits = self.model(mixed.images)
        if self.pretraining(step):
            return weighted_dice_ce_loss(logits, mixed.labels, mixed.weights)
        n = len(logits) // 2
        inward = weighted_dice_ce_loss(logits[:n], mixed.labels[:n], mixed.weights[:n])
        outward = weighted_dice_ce_loss(logits[n:], mixed.labels[n:], mixed.weights[n:])
        parts = {key: inward[key] + outward[key] for key in inward}
        return {**parts, "loss_inward": inward["loss"], "loss_outward": outward["loss"]}

    def after_step(self, step: int) -> None:
        """At the end of pre-training the teacher becomes the student; afterwards it follows it by EMA."""
        if step + 1 == self.pretrain_steps:
            self.teacher.load_state_dict(self.model.state_dict())
        elif not self.pretraining(step):
            ema_update(self.teacher, self.model, self.config.ema_decay)

    def extra_state(self) -> dict[str, Any]:
        """The method's generator: a resumed run draws the same masks and pairs as an uninterrupted one."""
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        load_generator_state(self.generator, state["generator"])
