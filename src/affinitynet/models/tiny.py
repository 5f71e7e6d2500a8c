"""A small dilated residual CNN (~0.5 M parameters) that trains from scratch on CPU in minutes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (channels unchanged)."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class Bottleneck(nn.Module):
    """1x1 -> dilated 3x3 -> 1x1 with a projection shortcut when the shape changes."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn3.weight)
        self.shortcut = None
        if cin != cout or stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, ceil(H / stride), ceil(W / stride))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TinyNet(Backbone):
    """Stride-8 stem, then three stages with dilation 1, 2, 4; features (64, 128, 256) channels.

    Receptive field at output stride 8: about 240 px (enough for 30-60 px objects at 128 px).
    Nothing is frozen and BatchNorm trains normally: it is meant to be trained from scratch.
    """

    name = "tiny"
    channels = (64, 128, 256)
    level_channels = (48, 64, 128, 256)

    def __init__(self, *, output_stride: int = 8, freeze_bn: bool = False, bn_affine_trainable: bool = True):
        if output_stride not in (8, 16):
            raise ConfigError(f"tiny supports output_stride 8 or 16, got {output_stride}")
        super().__init__(output_stride=output_stride, freeze_bn=freeze_bn, bn_affine_trainable=bn_affine_trainable)
        # at stride 16, layer2 downsamples once more and the later dilations halve
        s2, d2, d3 = (1, 2, 4) if output_stride == 8 else (2, 1, 2)
        self.stem = nn.Sequential(_conv_bn_relu(3, 32, 2), _conv_bn_relu(32, 48, 2), _conv_bn_relu(48, 64, 2))
        self.layer1 = BasicBlock(64)
        self.layer2 = nn.Sequential(Bottleneck(64, 48, 128, stride=s2, dilation=d2),
                                    Bottleneck(128, 48, 128, dilation=d2))
        self.layer3 = nn.Sequential(Bottleneck(128, 96, 256, dilation=d3), Bottleneck(256, 96, 256, dilation=d3))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._freeze()

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Strides of the stem's second conv, layer1, layer2 and layer3 outputs."""
        return (4, 8, self.output_stride, self.output_stride)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, 48, H/4, W/4), (B, 64, H/8, W/8), (B, 128, h, w), (B, 256, h, w)]."""
        s4 = self.stem[1](self.stem[0](x))
        f1 = self.layer1(self.stem[2](s4))
        f2 = self.layer2(f1)
        return [s4, f1, f2, self.layer3(f2)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, 64, .), (B, 128, h, w), (B, 256, h, w)], h = ceil(H / output_stride)."""
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]
