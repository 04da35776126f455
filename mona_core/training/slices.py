"""In-memory slice banks for training and whole volumes for validation.

Labelled patients contribute image + label slices; unlabelled patients contribute image slices only — their label
files are never opened, so a "1 %" run cannot leak labels. Slices are normalised with the dataset's preset and
resized once to the training size, then sampled with augmentation each step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mona_core.data.augment import weak_augment
from mona_core.data.dataset import CaseRecord, DatasetIndex
from mona_core.data.gpu_augment import sampler_augment_batch
from mona_core.data.slicing import image_to_slices, label_to_slices
from mona_core.data.splits import LabelledSelection
from mona_core.io import read_image, read_label
from mona_core.metrics import spacing_zyx_from_xyz
from mona_core.training.methods.base import Batch

logger = logging.getLogger(__name__)


@dataclass
class SliceBank:
    """Training slices: ``images`` (N, 1, S, S) float32 with ``labels`` (N, S, S) uint8, and ``unlabelled``
    images (M, 1, S, S) float32."""

    images: np.ndarray
    labels: np.ndarray
    unlabelled: np.ndarray

    @property
    def num_labelled(self) -> int:
        return int(self.images.shape[0])


@dataclass
class ValCase:
    """A whole validation volume on its native grid; ``spacing_zyx`` is in numpy axis order."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing_zyx: tuple[float, float, float]


def build_slice_bank(index: DatasetIndex, selection: LabelledSelection, size: int) -> SliceBank:
    """Read the training split: labels only for the selected patients."""
    labelled = set(selection.labelled)
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    unlabelled: list[np.ndarray] = []
    for case in index.cases_in("train"):
        image = read_image(case.image)
        slices = image_to_slices(image.array, index.preset, size)
        if case.patient_id in labelled and case.label is not None:
            label = read_label(case.label, image.geometry, index.num_classes)
            images.append(slices)
            labels.append(label_to_slices(label.array, size))
        elif case.patient_id not in labelled:
            unlabelled.append(slices)
    if not images:
        raise ValueError(f"expected labelled slices from patients {sorted(labelled)}, got none in the train split")
    bank = SliceBank(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        unlabelled=np.concatenate(unlabelled) if unlabelled else np.zeros((0, 1, size, size), np.float32),
    )
    logger.info("slice bank: %d labelled slices, %d unlabelled slices", bank.num_labelled, len(bank.unlabelled))
    return bank


def load_val_cases(index: DatasetIndex, split: str = "val") -> list[ValCase]:
    """Whole labelled volumes of ``split`` for validation on the native grid."""
    return [_val_case(case, index.num_classes) for case in index.cases_in(split) if case.label is not None]


def _val_case(case: CaseRecord, num_classes: int) -> ValCase:
    image = read_image(case.image)
    label = read_label(case.label, image.geometry, num_classes) if case.label else None
    assert label is not None
    spacing = spacing_zyx_from_xyz(image.geometry.spacing)
    return ValCase(case.case_id, image.array, label.array, (spacing[0], spacing[1], spacing[2]))


def sample_batch(
    bank: SliceBank,
    labelled: int,
    batch_size: int,
    rng: np.random.Generator,
    augment: bool,
    augment_unlabelled: bool | None = None,
) -> Batch:
    """``labelled`` labelled slices with labels, and ``batch_size - labelled`` unlabelled slices.

    Unlabelled slices come from the unlabelled patients; when there are none (every patient labelled) the images
    of labelled slices stand in, without their labels. ``augment_unlabelled`` (default: ``augment``) is False for
    methods that make their own weak view of unlabelled slices on the device (MONA's teacher view).
    """
    picks = rng.integers(0, bank.num_labelled, size=labelled)
    images, labels = _stack(bank.images[picks], list(bank.labels[picks]), rng, augment)
    count = batch_size - labelled
    pool = bank.unlabelled if len(bank.unlabelled) else bank.images
    extra = pool[rng.integers(0, len(pool), size=count)] if count > 0 else pool[:0]
    return Batch(
        images, labels, _stack_unlabelled(extra, rng, augment if augment_unlabelled is None else augment_unlabelled)
    )


def _stack_unlabelled(images: np.ndarray, rng: np.random.Generator, augment: bool) -> torch.Tensor:
    if augment:
        images = np.stack([weak_augment(image, None, rng)[0] for image in images]) if len(images) else images
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def _stack(
    images: np.ndarray, labels: Sequence[np.ndarray], rng: np.random.Generator, augment: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    out_images, out_labels = [], []
    for image, label in zip(images, labels, strict=True):
        if augment:
            image, maybe_label = weak_augment(image, label, rng)
            assert maybe_label is not None
            label = maybe_label
        out_images.append(image)
        out_labels.append(label)
    return torch.from_numpy(np.stack(out_images)), torch.from_numpy(np.stack(out_labels).astype(np.int64))


@dataclass(frozen=True)
class DeviceSlices:
    """The slice bank as tensors on the training device: images (N, 1, S, S) float32, labels (N, S, S) int64,
    unlabelled (M, 1, S, S). Built once per run, so a step moves no slice between host and device."""

    images: torch.Tensor
    labels: torch.Tensor
    unlabelled: torch.Tensor

    @classmethod
    def from_bank(cls, bank: SliceBank, device: torch.device) -> DeviceSlices:
        unlabelled = bank.unlabelled if len(bank.unlabelled) else bank.images
        return cls(
            torch.as_tensor(bank.images, device=device),
            torch.as_tensor(bank.labels.astype(np.int64), device=device),
            torch.as_tensor(unlabelled, device=device),
        )


def sample_batch_on_device(
    slices: DeviceSlices,
    labelled: int,
    batch_size: int,
    rng: np.random.Generator,
    generator: torch.Generator | None,
    augment_unlabelled: bool = True,
) -> Batch:
    """``sample_batch`` for a bank held on the device: the same picks from ``rng``, then the weak augmentation of
    ``sample_batch`` (``sampler_augment_batch``: one resampling per slice, labels nearest) batched on the
    device with ``generator``; ``generator=None`` means no augmentation. Unlabelled slices are augmented only with
    ``augment_unlabelled`` (off for methods that make their own weak view)."""
    device = slices.images.device
    picks = torch.as_tensor(rng.integers(0, len(slices.images), size=labelled), device=device)
    extra = torch.as_tensor(rng.integers(0, len(slices.unlabelled), size=batch_size - labelled), device=device)
    images, labels, unlabelled = slices.images[picks], slices.labels[picks], slices.unlabelled[extra]
    if generator is not None:
        images, maybe_labels = sampler_augment_batch(images, labels, generator)
        assert maybe_labels is not None
        labels = maybe_labels
        if augment_unlabelled and len(unlabelled):
            unlabelled = sampler_augment_batch(unlabelled, None, generator)[0]
    return Batch(images, labels, unlabelled)


def random_windows(batch: Batch, patch: int, rng: np.random.Generator) -> Batch:
    """A random ``patch`` x ``patch`` window of every slice of ``batch`` (offsets from ``rng``, uniform over the
    slice, one per slice); a labelled slice's label is cut at its image's window. A window as large as the slice
    is the slice itself."""
    side = batch.images.shape[-1]
    if not 0 < patch <= side or batch.images.shape[-2] != side:
        raise ValueError(f"expected a patch in 1..{side} of square slices, got {patch} for {tuple(batch.images.shape)}")
    if patch == side:
        return batch
    labelled = rng.integers(0, side - patch + 1, size=(len(batch.images), 2))
    unlabelled = rng.integers(0, side - patch + 1, size=(len(batch.unlabelled), 2))
    return Batch(
        _windows(batch.images, labelled, patch),
        _windows(batch.labels, labelled, patch),
        _windows(batch.unlabelled, unlabelled, patch),
    )


def _windows(tensors: torch.Tensor, offsets: np.ndarray, patch: int) -> torch.Tensor:
    if not len(tensors):
        return tensors[..., :patch, :patch]
    cut = [t[..., y : y + patch, x : x + patch] for t, (y, x) in zip(tensors, offsets.tolist(), strict=True)]
    return torch.stack(cut).contiguous()
