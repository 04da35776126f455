"""MONA's training-only heads: global/local projection heads, the predictor and the FPN representation head.

Inference uses the UNet alone; these modules read the features of ``UNet.forward_features``:

- ``ProjectionHead`` (h) maps the bottleneck ``(N, 256, H/16, W/16)`` to a global embedding ``(N, 512)``; the student
  and the teacher each own one. ``Predictor`` (h') maps the student's embedding to the secondary space ``(N, 512)``.
- ``LocalProjectionHead`` embeds 64x64 views of the output logits (``random_local_views``) into ``(V, 512)`` for the
  local instance discrimination of GLCon.
- ``RepresentationHead`` fuses the decoder maps with an FPN into ``(N, F, H, W)``; ``sample_pixels`` picks a few
  pixels per class and only those are projected to the m = 512-d, L2-normalised representations of the anatomical
  contrastive loss (eq. 3-5), so memory is O(P x 512) rather than O(N x H x W x 512).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mona_core.models.unet import UNetConfig


@dataclass(frozen=True)
class HeadsConfig:
    """Layer sizes of every MONA head (paper defaults: 512-d embeddings, m = 512); stored in checkpoints.

    ``norm`` is the normalisation inside the global projection head and the predictor (see ``ProjectionHead``);
    the local head keeps BatchNorm2d, whose statistics span every pixel of 36 views rather than three samples.
    """

    bottleneck_channels: int = 256
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    num_classes: int = 4
    hidden: int = 512
    embed_dim: int = 512
    fpn_channels: int = 64
    representation_dim: int = 512
    norm: str = "batch"

    @classmethod
    def from_unet(cls, unet: UNetConfig, **overrides: Any) -> HeadsConfig:
        """Read the bottleneck width, decoder widths (coarse to fine) and class count off a UNet config."""
        widths = unet.features
        derived: dict[str, Any] = {
            "bottleneck_channels": widths[-1],
            "decoder_channels": tuple(reversed(widths[:-1])),
            "num_classes": unet.num_classes,
        }
        return cls(**{**derived, **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadsConfig:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        if "decoder_channels" in values:
            values["decoder_channels"] = tuple(int(v) for v in values["decoder_channels"])
        return cls(**values)


HEAD_NORMS = ("batch", "layer", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind not in HEAD_NORMS:
        raise ValueError(f"expected a head norm in {HEAD_NORMS}, got {kind!r}")
    if kind == "batch":
        return nn.BatchNorm1d(width)
    return nn.LayerNorm(width) if kind == "layer" else nn.Identity()


def _mlp(in_dim: int, hidden: int, out_dim: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), _norm(norm, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


class ProjectionHead(nn.Module):
    """h: global average pool, then Linear-norm-ReLU-Linear. ``(N, C, h, w)`` or pooled ``(N, C)`` → ``(N, out_dim)``.

    ``norm``: ``batch`` (BatchNorm1d: needs N >= 2 in training mode, and then each embedding depends on its batch
    companions), ``layer`` (LayerNorm: per sample) or ``none``.
    """

    def __init__(self, in_dim: int = 256, hidden: int = 512, out_dim: int = 512, norm: str = "batch") -> None:
        super().__init__()
        self.in_dim = in_dim
        self.mlp = _mlp(in_dim, hidden, out_dim, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (N, {self.in_dim}, h, w) or (N, {self.in_dim}), got {tuple(x.shape)}")
        return self.mlp(x.mean(dim=(2, 3)) if x.dim() == 4 else x)  # type: ignore[no-any-return]


class Predictor(nn.Module):
    """h' (student only): Linear-norm-ReLU-Linear, ``(N, dim)`` → ``(N, dim)`` (``norm`` as in ``ProjectionHead``)."""

    def __init__(self, dim: int = 512, hidden: int = 512, norm: str = "batch") -> None:
        super().__init__()
        self.dim = dim
        self.mlp = _mlp(dim, hidden, dim, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}), got {tuple(x.shape)}")
        return self.mlp(x)  # type: ignore[no-any-return]


class LocalProjectionHead(nn.Module):
    """Local h: 1x1 conv → BN → ReLU → 1x1 conv to ``out_dim``, averaged over the view.

    ``(V, in_channels, s, s)`` → ``(V, out_dim)``. The last 1x1 conv is linear and commutes with the average pool, so
    it is applied after pooling (same result, no ``(V, out_dim, s, s)`` tensor); its weights live in ``self.out``.
    """

    def __init__(self, in_channels: int = 4, hidden: int = 512, out_dim: int = 512) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)
        )
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.dim() != 4 or views.shape[1] != self.in_channels:
            raise ValueError(f"expected (V, {self.in_channels}, s, s), got {tuple(views.shape)}")
        pooled = self.hidden(views).mean(dim=(2, 3))
        return self.out(pooled)  # type: ignore[no-any-return]


def _randint(high: int, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``count`` integers in ``[0, high)``, drawn on the generator's device (CPU by default), then moved."""
    draw_on = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, high, (count,), generator=generator, device=draw_on).to(device)


def random_local_views(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    num_views: int = 36,
    size: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``num_views`` windows at the SAME locations from two ``(N, C, H, W)`` logit maps of equal shape.

    View ``i`` comes from sample ``i % N`` at a random top-left corner; ``size`` shrinks to ``min(H, W)`` when the
    maps are smaller. Returns two ``(num_views, C, size, size)`` tensors (differentiable gathers).
    """
    if logits_a.shape != logits_b.shape or logits_a.dim() != 4:
        raise ValueError(
            f"expected two (N, C, H, W) maps of equal shape, got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}"
        )
    if num_views < 1 or size < 1:
        raise ValueError(f"expected num_views >= 1 and size >= 1, got {num_views} and {size}")
    n, channels, height, width = logits_a.shape
    size = min(size, height, width)
    device = logits_a.device
    tops = _randint(height - size + 1, num_views, generator, device)
    lefts = _randint(width - size + 1, num_views, generator, device)
    offsets = torch.arange(size, device=device)
    rows = (tops[:, None] + offsets)[:, None, :, None]
    cols = (lefts[:, None] + offsets)[:, None, None, :]
    samples = (torch.arange(num_views, device=device) % n)[:, None, None, None]
    chans = torch.arange(channels, device=device)[None, :, None, None]
    return logits_a[samples, chans, rows, cols], logits_b[samples, chans, rows, cols]


class RepresentationHead(nn.Module):
    """FPN fusion of the decoder maps (``fuse``) and a per-pixel MLP to L2-normalised ``out_dim`` vectors (``project``).

    ``fuse``: lateral 1x1 convs to ``fpn_channels``, top-down bilinear up-sampling + add, a 3x3 smoothing conv at
    half resolution, then the finest lateral added after up-sampling (the 3x3 conv at full resolution cost more than
    the whole UNet step on a CPU, for no sampled pixel's benefit). ``project`` is the paper's "consecutive 1x1
    convolutions" written as Linear-ReLU-Linear on sampled pixels.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (128, 64, 32, 16),
        fpn_channels: int = 64,
        out_dim: int = 512,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.fpn_channels = fpn_channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, kernel_size=1) for c in self.in_channels)
        self.smooth = nn.Conv2d(fpn_channels, fpn_channels, kernel_size=3, padding=1)
        self.mlp = nn.Sequential(nn.Linear(fpn_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def fuse(self, decoder: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoder maps coarse to fine, ``[(N, 128, H/8, W/8), ..., (N, 16, H, W)]`` → ``(N, fpn_channels, H, W)``."""
        widths = tuple(int(f.shape[1]) for f in decoder)
        if widths != self.in_channels:
            raise ValueError(f"expected decoder maps with channels {self.in_channels}, got {widths}")
        fused = self.lateral[0](decoder[0])
        for lateral, feature in zip(self.lateral[1:-1], decoder[1:-1], strict=True):
            fused = self._up(fused, feature) + lateral(feature)
        finest = decoder[-1]
        return self._up(self.smooth(fused), finest) + self.lateral[-1](finest)  # type: ignore[no-any-return]

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``(P, fpn_channels)`` sampled pixel features → ``(P, out_dim)`` unit vectors."""
        if features.dim() != 2 or features.shape[1] != self.fpn_channels:
            raise ValueError(f"expected (P, {self.fpn_channels}), got {tuple(features.shape)}")
        return F.normalize(self.mlp(features), dim=1)

    def forward(self, decoder: Sequence[torch.Tensor]) -> torch.Tensor:
        """Alias of ``fuse``: the full-resolution map is ``fpn_channels`` wide; project only sampled pixels."""
        return self.fuse(decoder)


class PixelSample(NamedTuple):
    """Sampled pixels: ``features`` (P, F), ``labels`` (P,) long, ``confidence`` (P,)."""

    features: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor


def _check_pixel_inputs(fused: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor) -> None:
    if fused.dim() != 4:
        raise ValueError(f"expected fused features (N, F, H, W), got {tuple(fused.shape)}")
    expected = (fused.shape[0], *fused.shape[2:])
    for name, tensor in (("labels", labels), ("confidence", confidence)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"expected {name} of shape {expected}, got {tuple(tensor.shape)}")


def sample_pixels(
    fused: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    per_class: int,
    generator: torch.Generator | None = None,
    hard_threshold: float | None = None,
) -> PixelSample:
    """Sample up to ``per_class`` pixels of every class present (negative labels are ignored).

    ``fused``: (N, F, H, W); ``labels``: (N, H, W) integer (ground truth or pseudo-labels); ``confidence``: (N, H, W)
    (the predicted probability of each pixel's label). Without ``hard_threshold`` the draw is uniform (class means,
    negative keys). With it, the draw is eq. 5's query selection over ALL pixels of the class: hard pixels
    (confidence <= threshold) first, in random order, then easy ones to fill up; so the threshold decides which
    pixels are learned from, not just their order. Returns ``PixelSample`` with P <= per_class x classes rows,
    classes in ascending order. Gathers only the chosen pixels: no (N*H*W, F) copy is made.
    """
    _check_pixel_inputs(fused, labels, confidence)
    if per_class < 1:
        raise ValueError(f"expected per_class >= 1, got {per_class}")
    flat_labels, flat_confidence = labels.reshape(-1), confidence.reshape(-1)
    classes = [int(c) for c in torch.unique(flat_labels).tolist() if c >= 0]
    easy = None if hard_threshold is None else flat_confidence.detach() > hard_threshold
    chosen = [_sample_class(flat_labels, c, per_class, generator, easy) for c in classes]
    index = torch.cat(chosen) if chosen else flat_labels.new_zeros(0)
    plane = fused.shape[2] * fused.shape[3]
    features = fused.flatten(2)[index // plane, :, index % plane]
    return PixelSample(features, flat_labels[index].long(), flat_confidence[index])


def _sample_class(
    flat_labels: torch.Tensor,
    cls: int,
    per_class: int,
    generator: torch.Generator | None,
    easy: torch.Tensor | None,
) -> torch.Tensor:
    """Positions of up to ``per_class`` pixels of class ``cls``: a random order, hard (not ``easy``) ones first."""
    positions = torch.nonzero(flat_labels == cls).squeeze(1)
    if positions.numel() <= per_class:
        return positions
    draw_on = generator.device if generator is not None else torch.device("cpu")
    priority = torch.rand(positions.numel(), generator=generator, device=draw_on).to(positions.device)
    if easy is not None:
        priority = priority + easy[positions].to(priority.dtype)
    return positions[priority.argsort()[:per_class]]


class MonaHeads(nn.Module):
    """All heads of one network built from a ``HeadsConfig`` (the teacher simply never calls ``predictor``)."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        self.projection = ProjectionHead(config.bottleneck_channels, config.hidden, config.embed_dim, config.norm)
        self.predictor = Predictor(config.embed_dim, config.hidden, config.norm)
        self.local_projection = LocalProjectionHead(config.num_classes, config.hidden, config.embed_dim)
        self.representation = RepresentationHead(
            config.decoder_channels, config.fpn_channels, config.representation_dim, config.hidden
        )


def build_heads(config: HeadsConfig) -> MonaHeads:
    """Build the MONA heads for one network (student or teacher)."""
    return MonaHeads(config)
