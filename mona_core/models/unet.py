"""The paper's 2D UNet (SSL4MIS family).

Encoder widths 16-32-64-128-256 with dropout 0.05/0.1/0.2/0.3/0.5; each block is two 3x3 conv + BatchNorm +
LeakyReLU; the decoder up-samples with a 1x1 conv followed by bilinear x2, concatenates the skip and applies a
block; a 3x3 conv gives the logits. Input ``(N, in_channels, H, W)`` with H and W divisible by 16; logits
``(N, num_classes, H, W)``; channel 0 is background.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    in_channels: int = 1
    num_classes: int = 4
    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    dropout: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    name: str = field(default="unet")

    def __post_init__(self) -> None:
        if len(self.features) != len(self.dropout):
            raise ValueError(
                f"expected one dropout rate per encoder level, got {len(self.dropout)} for {len(self.features)}"
            )
        if self.num_classes < 2:
            raise ValueError(f"expected at least 2 classes (background + one), got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        data["dropout"] = list(self.dropout)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        return cls(
            in_channels=int(data["in_channels"]),
            num_classes=int(data["num_classes"]),
            features=tuple(int(v) for v in data["features"]),
            dropout=tuple(float(v) for v in data["dropout"]),
            name=str(data.get("name", "unet")),
        )


class UNetOutput(NamedTuple):
    """Logits plus the features the MONA heads read: the bottleneck and the decoder maps (coarse to fine)."""

    logits: torch.Tensor
    bottleneck: torch.Tensor
    decoder: list[torch.Tensor]


class ConvBlock(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(),
        )


class UpBlock(nn.Module):
    """1x1 conv to the skip's width, bilinear x2, concatenate the skip, conv block."""

    def __init__(self, in_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, skip_ch, kernel_size=1)
        self.block = ConvBlock(2 * skip_ch, skip_ch, dropout=0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.block(torch.cat([skip, x], dim=1))  # type: ignore[no-any-return]


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths, rates = config.features, config.dropout
        self.stem = ConvBlock(config.in_channels, widths[0], rates[0])
        self.down = nn.ModuleList(ConvBlock(widths[i - 1], widths[i], rates[i]) for i in range(1, len(widths)))
        self.up = nn.ModuleList(UpBlock(widths[i], widths[i - 1]) for i in range(len(widths) - 1, 0, -1))
        self.head = nn.Conv2d(widths[0], config.num_classes, kernel_size=3, padding=1)

    def forward_features(self, x: torch.Tensor) -> UNetOutput:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        bottleneck = y
        decoder: list[torch.Tensor] = []
        for block in self.up:
            y = block(y, skips.pop())
            decoder.append(y)
        return UNetOutput(logits=self.head(y), bottleneck=bottleneck, decoder=decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
