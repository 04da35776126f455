"""Batched torch augmentation on the training device: the teacher's weak view, the student's strong view, and the
random transform T of the equivariance loss (eq. 6).

Conventions: images ``(B, C, H, W)`` float in [0, 1] (C = 1 for slices); labels ``(B, H, W)`` long or None (an
unlabelled batch). Geometry goes through ``F.affine_grid`` / ``F.grid_sample`` with ``align_corners=False``: images
bilinear, labels nearest, zeros (background) outside the field of view, so labels stay integer and aligned.
Every random draw comes from the given ``torch.Generator`` on the generator's own device and is then moved to the
images' device: the same seed gives the same outputs, and a CPU generator gives the same draws for CPU or CUDA images.

Unlike the reference code, the diffeomorphic deformation warps labels / pseudo-labels together with the images.
This module is NOT imported by ``mona_core.data`` (which stays torch-free); import it by its full path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class StrongAugmentConfig:
    """The student's strong augmentation: weak geometry + contrast, brightness, CutMix and a diffeomorphic warp.

    ``crop_scale``: side of the crop as a fraction of the image side. ``contrast``: factor range of a linear contrast
    around each image's mean; ``brightness``: maximum absolute shift; ``cutmix_prob``: chance per sample of pasting a
    box (area fraction in ``cutmix_area``) from another sample; ``deform_magnitude``: std of the velocity field as a
    fraction of the image side (0.012 is about 3 px at 256; 0 disables the warp), drawn on a ``deform_grid`` x
    ``deform_grid`` grid, integrated with ``squarings`` scaling-and-squaring steps. ``contrast=(1, 1)`` and
    ``brightness=0`` give a purely geometric augmentation.
    """

    max_degrees: float = 20.0
    crop_scale: tuple[float, float] = (0.8, 1.0)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 0.1
    cutmix_prob: float = 0.5
    cutmix_area: tuple[float, float] = (0.1, 0.4)
    deform_magnitude: float = 0.012
    deform_grid: int = 8
    squarings: int = 6


def _uniform(
    shape: Sequence[int], low: float, high: float, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """Uniform draws in ``[low, high)`` from ``generator`` (on its device), returned on ``like``'s device and dtype."""
    draw = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return (low + (high - low) * draw).to(device=like.device, dtype=like.dtype)


def _check_batch(images: torch.Tensor, labels: torch.Tensor | None) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    expected = (images.shape[0], *images.shape[2:])
    if labels is not None and tuple(labels.shape) != expected:
        raise ValueError(f"expected labels of shape {expected}, got {tuple(labels.shape)}")


def affine_theta(
    angles: torch.Tensor,
    scales: torch.Tensor,
    translations: torch.Tensor,
    flips: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``(B, 2, 3)`` matrices for ``F.affine_grid`` mapping output to input coordinates (normalised, x then y).

    ``input = scale * R(angle) * Flip * output + translation``: ``angles`` (B,) radians, rotating in pixel space (so
    non-square images are not sheared; +90 degrees equals ``torch.rot90(k=1, dims=(2, 3))``); ``scales`` (B,)
    sampling scale (< 1 zooms in); ``translations`` (B, 2) normalised; ``flips`` (B,) bool, horizontal flip.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    sign = 1.0 - 2.0 * flips.to(angles.dtype)
    aspect = height / width
    row_x = torch.stack([cos * sign, -sin * aspect], dim=1)
    row_y = torch.stack([sin * sign / aspect, cos], dim=1)
    linear = torch.stack([row_x, row_y], dim=1) * scales[:, None, None]
    return torch.cat([linear, translations[:, :, None]], dim=2)


def _identity_grid(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(2, 3, device=like.device, dtype=like.dtype).expand(batch, 2, 3)
    return F.affine_grid(eye, [batch, 1, height, width], align_corners=False)


def _apply_theta(grid: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Push sampling points ``(B, H, W, 2)`` through affine maps ``(B, 2, 3)``."""
    return torch.einsum("bij,bhwj->bhwi", theta[:, :, :2], grid) + theta[:, None, None, :, 2]


def _warp_pair(
    images: torch.Tensor, labels: torch.Tensor | None, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample images (bilinear) and labels (nearest) at the same grid; zeros / background outside."""
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if labels is None:
        return warped, None
    as_float = labels[:, None].to(images.dtype)
    warped_labels = F.grid_sample(as_float, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped, warped_labels[:, 0].round().to(labels.dtype)


def _weak_theta(
    images: torch.Tensor, generator: torch.Generator, max_degrees: float, crop_scale: tuple[float, float]
) -> torch.Tensor:
    """Random rotation in ±max_degrees, a crop of side ``crop_scale`` inside the image, a horizontal flip (p = 0.5)."""
    batch, _, height, width = images.shape
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"expected 0 < crop_scale[0] <= crop_scale[1] <= 1, got {crop_scale}")
    angles = _uniform((batch,), -max_degrees, max_degrees, generator, images) * (math.pi / 180.0)
    scales = _uniform((batch,), crop_scale[0], crop_scale[1], generator, images)
    centres = _uniform((batch, 2), -1.0, 1.0, generator, images) * (1.0 - scales[:, None])
    flips = _uniform((batch,), 0.0, 1.0, generator, images) < 0.5
    return affine_theta(angles, scales, centres, flips, height, width)


def weak_augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    max_degrees: float = 20.0,
    crop_scale: tuple[float, float] = (0.8, 1.0),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's weak view: per sample a random rotation, crop-and-resize back to H x W and horizontal flip.

    ``images``: (B, C, H, W) float; ``labels``: (B, H, W) long or None. One affine per sample, one resampling.
    """
    _check_batch(images, labels)
    theta = _weak_theta(images, generator, max_degrees, crop_scale)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return _warp_pair(images, labels, grid)


def _sampler_theta(images: torch.Tensor, generator: torch.Generator, max_degrees: float) -> torch.Tensor:
    """Per sample: with p = 1/2 one of the four reflections (a turn by k x 90 degrees, k uniform in 0-3, then a
    flip), else with p = 1/2 a rotation in ±max_degrees, else nothing. Every sample draws the same numbers."""
    batch, _, height, width = images.shape
    reflect = _uniform((batch,), 0.0, 1.0, generator, images) < 0.5
    rotate = _uniform((batch,), 0.0, 1.0, generator, images) < 0.5
    quarter_turns = torch.floor(_uniform((batch,), 0.0, 4.0, generator, images)).clamp(max=3.0)
    small = _uniform((batch,), -max_degrees, max_degrees, generator, images) * (math.pi / 180.0)
    angles = torch.where(reflect, quarter_turns * (math.pi / 2.0), torch.where(rotate, small, torch.zeros_like(small)))
    ones = torch.ones_like(small)
    return affine_theta(
        angles, ones, torch.zeros(batch, 2, dtype=small.dtype, device=small.device), reflect, height, width
    )


def sampler_augment_batch(
    images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator, max_degrees: float = 20.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The augmentation of sampled training batches, batched: the distribution of the host sampler's
    ``mona_core.data.augment.weak_augment`` (a quarter turn and flip, or a small rotation, as the widely used ACDC
    semi-supervised data loaders draw it), so that ``data_on_device`` changes where it runs, not what it draws.

    Not the teacher's weak view (``weak_augment_batch``): measured on ACDC (docs/METHOD.md), the batches need the
    quarter turns (without them the CPU protocol's fine-tuning fell from 60.1 to 42.9 val DSC, last checkpoint,
    2 seeds), while the teacher's view of unlabelled slices does better without them (51.9).
    """
    _check_batch(images, labels)
    theta = _sampler_theta(images, generator, max_degrees)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return _warp_pair(images, labels, grid)


def random_velocity(
    batch: int, height: int, width: int, generator: torch.Generator, magnitude: float, coarse: int, like: torch.Tensor
) -> torch.Tensor:
    """Smooth stationary velocity ``(B, H, W, 2)`` in normalised units (x, y): Gaussian noise on a ``coarse`` grid,
    std ``magnitude`` as a fraction of the image side (resolution-independent), up-sampled bicubically to H x W."""
    noise = torch.randn((batch, 2, coarse, coarse), generator=generator, device=generator.device)
    noise = noise.to(device=like.device, dtype=like.dtype) * (2.0 * magnitude)
    field = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def integrate_velocity(velocity: torch.Tensor, squarings: int = 6) -> torch.Tensor:
    """Scaling and squaring: displacement ``u`` of ``exp(v)`` for a velocity ``(B, H, W, 2)`` (normalised units).

    Starts from ``v / 2**squarings`` and composes the map with itself ``squarings`` times:
    ``u <- u + u o (id + u)``. The result is a diffeomorphism for a smooth enough ``v``.
    """
    batch, height, width, _ = velocity.shape
    identity = _identity_grid(batch, height, width, velocity)
    disp: torch.Tensor = velocity / (2**squarings)
    for _ in range(squarings):
        moved = F.grid_sample(
            disp.permute(0, 3, 1, 2), identity + disp, mode="bilinear", padding_mode="border", align_corners=False
        )
        disp = disp + moved.permute(0, 2, 3, 1)
    return disp


def _contrast_brightness(
    images: torch.Tensor, generator: torch.Generator, contrast: tuple[float, float], brightness: float
) -> torch.Tensor:
    """Per sample: linear contrast around the image mean, then a brightness shift; clamped to [0, 1]."""
    batch = images.shape[0]
    factor = _uniform((batch, 1, 1, 1), contrast[0], contrast[1], generator, images)
    shift = _uniform((batch, 1, 1, 1), -brightness, brightness, generator, images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * factor + mean + shift).clamp(0.0, 1.0)


def _cutmix_mask(images: torch.Tensor, generator: torch.Generator, config: StrongAugmentConfig) -> torch.Tensor:
    """(B, H, W) bool: a random box per sample (area fraction in ``cutmix_area``), empty with p = 1 - cutmix_prob."""
    batch, _, height, width = images.shape
    side = _uniform((batch, 2), config.cutmix_area[0], config.cutmix_area[1], generator, images).sqrt()
    centre = _uniform((batch, 2), 0.0, 1.0, generator, images)
    used = _uniform((batch,), 0.0, 1.0, generator, images) < config.cutmix_prob
    lows, highs = (centre - side / 2).clamp(0.0, 1.0), (centre + side / 2).clamp(0.0, 1.0)
    ys = (torch.arange(height, device=images.device, dtype=images.dtype) + 0.5) / height
    xs = (torch.arange(width, device=images.device, dtype=images.dtype) + 0.5) / width
    in_y = (ys[None] >= lows[:, 1:2]) & (ys[None] < highs[:, 1:2])
    in_x = (xs[None] >= lows[:, 0:1]) & (xs[None] < highs[:, 0:1])
    return in_y[:, :, None] & in_x[:, None, :] & used[:, None, None]


def _cutmix(
    images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator, config: StrongAugmentConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Paste a box from another sample of the batch (a random permutation) into images and labels identically."""
    mask = _cutmix_mask(images, generator, config)
    source = torch.randperm(images.shape[0], generator=generator, device=generator.device).to(images.device)
    mixed = torch.where(mask[:, None], images[source], images)
    if labels is None:
        return mixed, None
    return mixed, torch.where(mask, labels[source], labels)


def _strong(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    config: StrongAugmentConfig,
    theta: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    batch, _, height, width = images.shape
    images = _contrast_brightness(images, generator, config.contrast, config.brightness)
    images, labels = _cutmix(images, labels, generator, config)
    grid = _identity_grid(batch, height, width, images)
    if config.deform_magnitude > 0:
        velocity = random_velocity(batch, height, width, generator, config.deform_magnitude, config.deform_grid, images)
        grid = grid + integrate_velocity(velocity, config.squarings)
    if theta is not None:
        grid = _apply_theta(grid, theta)
    return _warp_pair(images, labels, grid)


def strong_augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    config: StrongAugmentConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The student's strong view: weak geometry + contrast, brightness, CutMix and a diffeomorphic deformation.

    ``images``: (B, C, H, W) float in [0, 1]; ``labels``: (B, H, W) long or None. The weak affine and the warp are
    composed into one sampling grid (one interpolation); CutMix pastes the same box into images and labels.
    """
    config = config or StrongAugmentConfig()
    _check_batch(images, labels)
    theta = _weak_theta(images, generator, config.max_degrees, config.crop_scale)
    return _strong(images, labels, generator, config, theta)


def strong_from_weak(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    config: StrongAugmentConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Only the strong extras (contrast, brightness, CutMix, deformation) on an already weak view.

    For a student view built from the teacher's weak view: pass the teacher's pseudo-labels as ``labels`` and they
    are mixed and warped exactly like the image.
    """
    config = config or StrongAugmentConfig()
    _check_batch(images, labels)
    return _strong(images, labels, generator, config, theta=None)


@dataclass(frozen=True, eq=False)
class RandomAffineTransform:
    """T of the equivariance loss: one random affine per sample, applied identically to images or logit maps.

    ``angles`` (B,) radians, ``scales`` (B,) zoom (> 1 enlarges), ``translations`` (B, 2) normalised (x, y). The
    matrices are built at ``apply`` time for the input's H x W, so one instance fits images and logits alike.
    """

    angles: torch.Tensor
    scales: torch.Tensor
    translations: torch.Tensor

    @classmethod
    def sample(
        cls,
        batch: int,
        generator: torch.Generator,
        max_degrees: float = 15.0,
        max_translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
    ) -> RandomAffineTransform:
        """Rotation in ±max_degrees, translation up to ``max_translate`` of the image size, zoom in ``scale``."""
        like = torch.empty(0, device=generator.device)
        angles = _uniform((batch,), -max_degrees, max_degrees, generator, like) * (math.pi / 180.0)
        scales = _uniform((batch,), scale[0], scale[1], generator, like)
        translations = _uniform((batch, 2), -max_translate, max_translate, generator, like) * 2.0
        return cls(angles, scales, translations)

    def _grid(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        batch, _, height, width = shape
        if batch != self.angles.shape[0]:
            raise ValueError(f"expected a batch of {self.angles.shape[0]}, got {batch}")
        angles, scales, shifts = (
            t.to(device=device, dtype=dtype) for t in (self.angles, self.scales, self.translations)
        )
        flips = torch.zeros_like(angles, dtype=torch.bool)
        theta = affine_theta(angles, 1.0 / scales, shifts, flips, height, width)
        return F.affine_grid(theta, [batch, 1, height, width], align_corners=False)

    def apply(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Transform ``x`` (B, C, H, W) (images or logits); zeros outside the field of view (see ``valid_mask``)."""
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
        grid = self._grid(x.shape, x.device, x.dtype)
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    def valid_mask(
        self, shape: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """(B, 1, H, W) bool: output pixels whose source lies inside the input (between its outer pixel centres)."""
        height, width = shape[-2], shape[-1]
        grid = self._grid(shape, device or self.angles.device, dtype)
        limit = torch.tensor([1.0 - 1.0 / width, 1.0 - 1.0 / height], device=grid.device, dtype=dtype) + 1e-5
        return (grid.abs() <= limit).all(dim=-1)[:, None]

    @staticmethod
    def intensity(
        images: torch.Tensor,
        generator: torch.Generator,
        gamma: tuple[float, float] = (0.7, 1.5),
        contrast: tuple[float, float] = (0.8, 1.2),
        brightness: float = 0.1,
    ) -> torch.Tensor:
        """Photometric change for the image branch only: random gamma, contrast and brightness; stays in [0, 1]."""
        _check_batch(images, None)
        exponent = _uniform((images.shape[0], 1, 1, 1), gamma[0], gamma[1], generator, images)
        return _contrast_brightness(images.clamp(0.0, 1.0) ** exponent, generator, contrast, brightness)
