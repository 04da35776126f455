from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mona_core.data.gpu_augment import (
    RandomAffineTransform,
    StrongAugmentConfig,
    affine_theta,
    integrate_velocity,
    random_velocity,
    sampler_augment_batch,
    strong_augment_batch,
    strong_from_weak,
    weak_augment_batch,
)

GEOMETRY_ONLY = StrongAugmentConfig(contrast=(1.0, 1.0), brightness=0.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _discs(batch: int = 3, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary images of discs and their labels ``image > 0.5``."""
    rows, cols = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    images = torch.stack(
        [((rows - 16 - 4 * b) ** 2 + (cols - 24 + 2 * b) ** 2 < (8 + 2 * b) ** 2).float() for b in range(batch)]
    )[:, None]
    return images, (images[:, 0] > 0.5).long()


def test_weak_shapes_labels_and_seed() -> None:
    images, labels = _discs()
    out_images, out_labels = weak_augment_batch(images, labels, _gen(1))
    again_images, again_labels = weak_augment_batch(images, labels, _gen(1))
    other_images, _ = weak_augment_batch(images, labels, _gen(2))
    assert out_images.shape == images.shape and out_labels is not None and out_labels.shape == labels.shape
    assert out_labels.dtype == torch.long and set(out_labels.unique().tolist()) <= {0, 1}
    assert torch.equal(out_images, again_images) and torch.equal(out_labels, again_labels)
    assert not torch.equal(out_images, other_images)
    assert weak_augment_batch(images, None, _gen(1))[1] is None


def test_weak_without_rotation_or_crop_is_identity_or_flip() -> None:
    images = torch.rand(8, 1, 10, 14, generator=_gen(0))
    out, _ = weak_augment_batch(images, None, _gen(3), max_degrees=0.0, crop_scale=(1.0, 1.0))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, images, strict=True)]
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, images, strict=True)]
    assert all(f != s for f, s in zip(flipped, same, strict=True))
    assert any(flipped) and any(same)


def test_affine_theta_quarter_turn_is_rot90() -> None:
    image = torch.rand(1, 1, 6, 6, generator=_gen(0))
    theta = affine_theta(
        torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1, 2), torch.zeros(1, dtype=torch.bool), 6, 6
    )
    out = F.grid_sample(image, F.affine_grid(theta, [1, 1, 6, 6], align_corners=False), align_corners=False)
    torch.testing.assert_close(out, torch.rot90(image, k=1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_rotation_does_not_shear_non_square_images() -> None:
    images, _ = _discs(batch=1, size=48)
    wide = F.pad(images, (16, 16))  # (1, 1, 48, 80), disc away from the borders
    theta = affine_theta(
        torch.tensor([0.7]), torch.ones(1), torch.zeros(1, 2), torch.zeros(1, dtype=torch.bool), 48, 80
    )
    out = F.grid_sample(wide, F.affine_grid(theta, list(wide.shape), align_corners=False), align_corners=False)
    assert abs(float(out.sum()) - float(wide.sum())) / float(wide.sum()) < 0.02


def test_strong_keeps_images_and_labels_aligned() -> None:
    images, labels = _discs(batch=4)
    out_images, out_labels = strong_augment_batch(images, labels, _gen(5), GEOMETRY_ONLY)
    assert out_labels is not None
    agreement = ((out_images[:, 0] > 0.5).long() == out_labels).float().mean()
    assert agreement > 0.99
    assert out_labels.sum() > 0.5 * labels.sum()


def test_strong_is_seeded_in_range_and_accepts_no_labels() -> None:
    images = torch.rand(4, 1, 32, 32, generator=_gen(0))
    first, _ = strong_augment_batch(images, None, _gen(7))
    second, labels = strong_augment_batch(images, None, _gen(7))
    assert labels is None and torch.equal(first, second)
    assert first.shape == images.shape and first.min() >= 0.0 and first.max() <= 1.0
    assert not torch.equal(first, strong_augment_batch(images, None, _gen(8))[0])


def test_cutmix_pastes_the_same_box_into_images_and_labels() -> None:
    labels = torch.arange(1, 7)[:, None, None].expand(6, 16, 16).clone()
    images = labels[:, None].float() / 10.0
    config = StrongAugmentConfig(
        max_degrees=0.0, crop_scale=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0, cutmix_prob=1.0,
        deform_magnitude=0.0,
    )  # fmt: skip
    out_images, out_labels = strong_augment_batch(images, labels, _gen(0), config)
    assert out_labels is not None
    assert torch.equal((out_images[:, 0] * 10.0).round().long(), out_labels)
    pasted = out_labels != labels
    assert pasted.any() and not pasted.all()


def test_deformation_is_smooth_and_invertible() -> None:
    like = torch.zeros(1)
    velocity = random_velocity(2, 64, 64, _gen(0), magnitude=0.012, coarse=8, like=like)
    displacement = integrate_velocity(velocity, squarings=6)
    assert displacement.shape == (2, 64, 64, 2)
    pixels = displacement * 32.0 + torch.stack(
        torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), dim=-1
    )
    d_dx = pixels[:, :-1, 1:] - pixels[:, :-1, :-1]
    d_dy = pixels[:, 1:, :-1] - pixels[:, :-1, :-1]
    jacobian = d_dx[..., 0] * d_dy[..., 1] - d_dx[..., 1] * d_dy[..., 0]
    assert jacobian.min() > 0.0
    assert 0.5 < float((displacement * 32.0).abs().max()) < 20.0
    torch.testing.assert_close(integrate_velocity(torch.zeros(1, 8, 8, 2)), torch.zeros(1, 8, 8, 2))


def test_strong_from_weak_warps_pseudo_labels_with_the_image() -> None:
    images, labels = _discs(batch=3, size=96)  # two resamplings: edges are a smaller share of a larger image
    weak_images, weak_labels = weak_augment_batch(images, labels, _gen(1))
    strong_images, strong_labels = strong_from_weak(weak_images, weak_labels, _gen(2), GEOMETRY_ONLY)
    assert strong_labels is not None
    assert ((strong_images[:, 0] > 0.5).long() == strong_labels).float().mean() > 0.99


def test_label_shape_is_checked() -> None:
    images, labels = _discs()
    with pytest.raises(ValueError, match=r"expected labels of shape \(3, 48, 48\), got \(3, 1, 48, 48\)"):
        strong_augment_batch(images, labels[:, None], _gen())


def test_degenerate_affine_is_identity() -> None:
    transform = RandomAffineTransform.sample(3, _gen(0), max_degrees=0.0, max_translate=0.0, scale=(1.0, 1.0))
    logits = torch.randn(3, 4, 12, 10, generator=_gen(1))
    torch.testing.assert_close(transform.apply(logits), logits, atol=1e-5, rtol=0)
    assert transform.valid_mask(logits.shape).shape == (3, 1, 12, 10)
    assert transform.valid_mask(logits.shape).all()


def test_same_transform_on_image_and_logits_agrees() -> None:
    labels = torch.randint(0, 4, (2, 8, 8), generator=_gen(0))
    labels = F.interpolate(labels[:, None].float(), size=(32, 32), mode="nearest")[:, 0].long()
    one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    transform = RandomAffineTransform.sample(2, _gen(4), max_degrees=30.0, max_translate=0.2)
    valid = transform.valid_mask(one_hot.shape)[:, 0]
    moved_labels = transform.apply(labels[:, None].float(), mode="nearest")[:, 0].long()
    moved_argmax = transform.apply(one_hot, mode="nearest").argmax(1)
    assert torch.equal(moved_argmax[valid], moved_labels[valid])
    indicator = (labels == 2).float()[:, None]
    bilinear_indicator = transform.apply(indicator)[:, 0] > 0.5
    binary = torch.stack([1.0 - indicator[:, 0], indicator[:, 0]], dim=1)
    assert torch.equal(transform.apply(binary).argmax(1).bool()[valid], bilinear_indicator[valid])
    assert not valid.all() and valid.float().mean() > 0.5
    ones = transform.apply(torch.ones(2, 1, 32, 32))[:, 0]
    torch.testing.assert_close(ones[valid], torch.ones_like(ones[valid]), atol=1e-3, rtol=0)


def test_intensity_is_seeded_and_bounded() -> None:
    images = torch.rand(3, 1, 16, 16, generator=_gen(0))
    first = RandomAffineTransform.intensity(images, _gen(9))
    assert torch.equal(first, RandomAffineTransform.intensity(images, _gen(9)))
    assert first.shape == images.shape and first.min() >= 0.0 and first.max() <= 1.0
    assert not torch.allclose(first, images)


@pytest.mark.gpu
def test_cuda_images_with_a_cpu_generator_match_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    images, labels = _discs()
    cpu_images, cpu_labels = strong_augment_batch(images, labels, _gen(3))
    gpu_images, gpu_labels = strong_augment_batch(images.cuda(), labels.cuda(), _gen(3))
    assert gpu_labels is not None and cpu_labels is not None
    torch.testing.assert_close(gpu_images.cpu(), cpu_images, atol=1e-3, rtol=0)
    assert (gpu_labels.cpu() == cpu_labels).float().mean() > 0.99


def test_the_sampler_augmentation_without_small_rotations_is_identity_or_a_reflection() -> None:
    """With max_degrees = 0 each sample is itself or one of the four reflections of the square (quarter turn then
    flip), as the host sampler draws them: never a pure quarter turn, and all four reflections occur."""
    images = torch.rand(64, 1, 12, 12, generator=_gen(0))
    labels = (images[:, 0] > 0.5).long()
    out, out_labels = sampler_augment_batch(images, labels, _gen(3), max_degrees=0.0)
    assert out_labels is not None and torch.equal(out_labels, (out[:, 0] > 0.5).long())  # labels move with images
    kinds = []
    for o, i in zip(out, images, strict=True):
        reflections = [torch.rot90(i.flip(-1), k, dims=(-2, -1)) for k in range(4)]
        turns = [torch.rot90(i, k, dims=(-2, -1)) for k in range(1, 4)]
        assert not any(torch.allclose(o, t, atol=1e-5) for t in turns)
        matches = [k for k, r in enumerate(reflections) if torch.allclose(o, r, atol=1e-5)]
        kinds.append("same" if torch.allclose(o, i, atol=1e-5) else f"reflection {matches[0]}")
    assert set(kinds) == {"same", "reflection 0", "reflection 1", "reflection 2", "reflection 3"}
