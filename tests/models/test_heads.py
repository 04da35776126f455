from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mona_core.models import (
    HeadsConfig,
    LocalProjectionHead,
    Predictor,
    ProjectionHead,
    RepresentationHead,
    UNetConfig,
    build_heads,
    build_model,
    random_local_views,
    sample_pixels,
)


class ShapeRecorder(TorchFunctionMode):
    """Records the shape of every tensor produced by a torch function while active."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.shapes.append(tuple(item.shape))
        return out


def test_projection_head_pools_maps_or_takes_pooled_vectors() -> None:
    head = ProjectionHead(in_dim=256, hidden=512, out_dim=512).eval()
    maps = torch.randn(3, 256, 2, 2)
    assert head(maps).shape == (3, 512)
    torch.testing.assert_close(head(maps), head(maps.mean(dim=(2, 3))))
    with pytest.raises(ValueError, match=r"expected \(N, 256, h, w\) or \(N, 256\), got \(3, 128, 2, 2\)"):
        head(torch.randn(3, 128, 2, 2))


def test_predictor_keeps_the_dimension() -> None:
    predictor = Predictor(dim=512, hidden=512)
    assert predictor(torch.randn(4, 512)).shape == (4, 512)
    with pytest.raises(ValueError, match=r"expected \(N, 512\)"):
        predictor(torch.randn(4, 256))


def test_local_head_equals_conv_then_pool() -> None:
    head = LocalProjectionHead(in_channels=4, hidden=32, out_dim=16).eval()
    views = torch.randn(5, 4, 8, 8)
    weight = head.out.weight[:, :, None, None]
    reference = F.conv2d(head.hidden(views), weight, head.out.bias).mean(dim=(2, 3))
    torch.testing.assert_close(head(views), reference)
    assert head(views).shape == (5, 16)
    with pytest.raises(ValueError, match="expected"):
        head(torch.randn(5, 3, 8, 8))


def _coordinate_logits(n: int, height: int, width: int) -> torch.Tensor:
    """Channels: row index, column index, sample index."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    maps = [torch.stack([rows, cols, torch.full_like(rows, i)]) for i in range(n)]
    return torch.stack(maps).float()


def test_local_views_share_locations_and_cycle_over_the_batch() -> None:
    logits = _coordinate_logits(2, 20, 24)
    views_a, views_b = random_local_views(
        logits, logits + 100.0, num_views=5, size=8, generator=torch.Generator().manual_seed(0)
    )
    assert views_a.shape == views_b.shape == (5, 3, 8, 8)
    torch.testing.assert_close(views_b, views_a + 100.0)
    for i, view in enumerate(views_a):
        assert torch.all(view[2] == i % 2)
        top, left = int(view[0, 0, 0]), int(view[1, 0, 0])
        torch.testing.assert_close(view, logits[i % 2, :, top : top + 8, left : left + 8])


def test_local_views_shrink_seed_and_grad() -> None:
    logits = torch.randn(2, 4, 16, 32, requires_grad=True)
    views_a, _ = random_local_views(logits, logits.detach(), num_views=3, size=64)
    assert views_a.shape == (3, 4, 16, 16)
    views_a.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    first = random_local_views(logits, logits, 4, 8, torch.Generator().manual_seed(3))[0]
    second = random_local_views(logits, logits, 4, 8, torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(first, second)
    with pytest.raises(ValueError, match="equal shape"):
        random_local_views(logits, logits[:, :2], 3, 8)


def _decoder(n: int, size: int) -> list[torch.Tensor]:
    return [torch.randn(n, c, size // s, size // s) for c, s in ((128, 8), (64, 4), (32, 2), (16, 1))]


def test_representation_fuse_and_project() -> None:
    head = RepresentationHead(in_channels=(128, 64, 32, 16), fpn_channels=64, out_dim=512)
    fused = head.fuse(_decoder(2, 32))
    assert fused.shape == (2, 64, 32, 32)
    reps = head.project(torch.randn(7, 64))
    assert reps.shape == (7, 512)
    torch.testing.assert_close(reps.norm(dim=1), torch.ones(7))
    with pytest.raises(ValueError, match=r"expected decoder maps with channels \(128, 64, 32, 16\)"):
        head.fuse(_decoder(2, 32)[::-1])


def test_sample_pixels_gathers_the_right_pixels() -> None:
    labels = torch.zeros(2, 6, 6, dtype=torch.long)
    labels[0, :2, :2] = 2
    labels[1, 5, 5] = 3
    labels[1, 0, 0] = -1
    fused = torch.arange(2 * 36, dtype=torch.float32).reshape(2, 1, 6, 6).expand(2, 3, 6, 6)
    confidence = torch.rand(2, 6, 6)
    sample = sample_pixels(fused, labels, confidence, per_class=5, generator=torch.Generator().manual_seed(0))
    assert sample.features.shape == (5 + 4 + 1, 3)
    assert sample.labels.tolist() == [0] * 5 + [2] * 4 + [3]
    index = sample.features[:, 0].long()
    assert torch.equal(labels.reshape(-1)[index], sample.labels)
    assert torch.equal(confidence.reshape(-1)[index], sample.confidence)
    assert index.unique().numel() == index.numel()
    with pytest.raises(ValueError, match=r"expected labels of shape \(2, 6, 6\)"):
        sample_pixels(fused, labels[:, :5], confidence, per_class=5)


def test_no_full_resolution_512_tensor_is_made() -> None:
    head = RepresentationHead(in_channels=(128, 64, 32, 16), fpn_channels=64, out_dim=512)
    decoder = [torch.randn(2, c, 4 // s or 1, 4 // s or 1) for c, s in ((128, 8), (64, 4), (32, 2), (16, 1))]
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    with ShapeRecorder() as recorder:
        fused = head.fuse(decoder)
        sample = sample_pixels(fused, labels, torch.rand(2, 4, 4), per_class=2)
        reps = head.project(sample.features)
    rows = sample.features.shape[0]
    assert fused.shape == (2, 64, 4, 4)
    assert rows <= 2 * 3 and reps.shape == (rows, 512)
    assert not [s for s in recorder.shapes if len(s) == 4 and s[1] == 512]
    assert max(s[0] for s in recorder.shapes if len(s) == 2 and s[-1] == 512) == rows


def test_sampled_projection_is_small_at_full_resolution() -> None:
    head = RepresentationHead(in_channels=(128, 64, 32, 16), fpn_channels=16, out_dim=512)
    fused = torch.randn(4, 16, 256, 256)
    labels = torch.randint(0, 4, (4, 256, 256), generator=torch.Generator().manual_seed(0))
    sample = sample_pixels(fused, labels, torch.rand(4, 256, 256), per_class=64)
    reps = head.project(sample.features)
    assert reps.shape == (64 * 4, 512)
    assert reps.numel() < fused.numel() // 16


def test_heads_fit_the_unet_features() -> None:
    config = HeadsConfig.from_unet(UNetConfig(num_classes=3), hidden=32, embed_dim=16, representation_dim=8)
    assert config.decoder_channels == (128, 64, 32, 16) and config.bottleneck_channels == 256
    assert HeadsConfig.from_dict(config.to_dict()) == config
    heads = build_heads(config)
    out = build_model(UNetConfig(num_classes=3)).forward_features(torch.randn(2, 1, 32, 32))
    assert heads.predictor(heads.projection(out.bottleneck)).shape == (2, 16)
    views, _ = random_local_views(out.logits, out.logits, num_views=4, size=16)
    assert heads.local_projection(views).shape == (4, 16)
    fused = heads.representation.fuse(out.decoder)
    sample = sample_pixels(fused, out.logits.argmax(1), out.logits.softmax(1).amax(1), per_class=3)
    assert heads.representation.project(sample.features).shape == (sample.labels.numel(), 8)
