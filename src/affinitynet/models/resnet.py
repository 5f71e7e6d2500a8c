"""ResNet-50/101 with torchvision's parameter names (so its ImageNet state dicts load), dilated to stride 8 or 16."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, inplanes, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(Backbone):
    """Dilated ResNet; features: layer2 (512), layer3 (1024), layer4 (2048)."""

    channels = (512, 1024, 2048)
    LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}

    level_channels = (64, 256, 512, 1024, 2048)

    def __init__(self, depth: str = "resnet50", *, output_stride: int = 8, freeze_bn: bool = True,
                 bn_affine_trainable: bool = True, dilated: bool = True):
        if depth not in self.LAYERS:
            raise ConfigError(f"unknown ResNet depth '{depth}' (valid: {', '.join(self.LAYERS)})")
        if output_stride not in (8, 16):
            raise ConfigError(f"{depth} supports output_stride 8 or 16, got {output_stride}")
        super().__init__(output_stride=output_stride, freeze_bn=freeze_bn, bn_affine_trainable=bn_affine_trainable)
        self.name = depth
        blocks = self.LAYERS[depth]
        self._inplanes = 64
        self._dilation = 1
        self._dilated = dilated  # False: layers past the output stride keep stride 1 undilated (IRN's ResNet-50)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2, dilate=output_stride == 8)
        self.layer4 = self._make_layer(512, blocks[3], stride=2, dilate=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._freeze()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # torchvision's replace_stride_with_dilation: the first block keeps the previous dilation
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride if self._dilated else 1
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self._inplanes, planes, stride, previous_dilation, downsample)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def frozen_modules(self) -> list[nn.Module]:
        """conv1, bn1 and layer1."""
        return [self.conv1, self.bn1, self.layer1]

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Strides of the stem, layer1, layer2, layer3 and layer4 outputs."""
        return (4, 4, 8, self.output_stride, self.output_stride)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [stem (B, 64, H/4, W/4), layer1 (B, 256, H/4, W/4), layer2 (512, /8), layer3, layer4]."""
        stem = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = [stem, self.layer1(stem)]
        for layer in (self.layer2, self.layer3, self.layer4):
            out.append(layer(out[-1]))
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [layer2 (B, 512, .), layer3 (B, 1024, h, w), layer4 (B, 2048, h, w)], h = ceil(H/stride).

        At output stride 8 all three are on the h x w grid; at 16 layer2 is at stride 8.
        """
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c2, c3, c4]
