"""ResNet-38 (Wu et al., "Wider or Deeper"), laid out exactly like the AffinityNet release's ``resnet38d``.

Attribute names match the reference so its checkpoints (``res38_cls.pth``, ``res38_aff.pth``)
and its converted ImageNet weights load without renaming inside the backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone


class ResBlock(nn.Module):
    """Pre-activation residual block with two 3x3 convolutions (the reference's ``ResBlock``)."""

    def __init__(self, in_channels, mid_channels, out_channels, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        if first_dilation is None:
            first_dilation = dilation
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride,
                                       padding=first_dilation, dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x, get_x_bn_relu: bool = False):
        """(B, in, H, W) -> (B, out, H', W'); with ``get_x_bn_relu`` also the block's BN-ReLU input."""
        branch2 = F.relu(self.bn_branch2a(x))
        x_bn_relu = branch2
        branch1 = x if self.same_shape else self.conv_branch1(branch2)
        branch2 = self.conv_branch2a(branch2)
        branch2 = F.relu(self.bn_branch2b1(branch2))
        branch2 = self.conv_branch2b1(branch2)
        out = branch1 + branch2
        return (out, x_bn_relu) if get_x_bn_relu else out


class ResBlock_bot(nn.Module):  # noqa: N801 - the reference's name
    """Pre-activation bottleneck block 1x1 -> 3x3 -> 1x1 with dropout (the reference's ``ResBlock_bot``)."""

    def __init__(self, in_channels, out_channels, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3,
                                        padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x, get_x_bn_relu: bool = False):
        """(B, in, H, W) -> (B, out, H', W'); with ``get_x_bn_relu`` also the block's BN-ReLU input."""
        branch2 = F.relu(self.bn_branch2a(x))
        x_bn_relu = branch2
        branch1 = x if self.same_shape else self.conv_branch1(branch2)
        branch2 = self.conv_branch2a(branch2)
        branch2 = self.dropout_2b1(F.relu(self.bn_branch2b1(branch2)))
        branch2 = self.conv_branch2b1(branch2)
        branch2 = self.dropout_2b2(F.relu(self.bn_branch2b2(branch2)))
        branch2 = self.conv_branch2b2(branch2)
        out = branch1 + branch2
        return (out, x_bn_relu) if get_x_bn_relu else out


class ResNet38(Backbone):
    """ResNet-38 at output stride 8; features: conv4 (512), conv5 (1024), conv6 (4096)."""

    name = "resnet38"
    channels = (512, 1024, 4096)

    def __init__(self, *, output_stride: int = 8, freeze_bn: bool = True, bn_affine_trainable: bool = False):
        if output_stride != 8:
            raise ConfigError(f"resnet38 supports output_stride 8 only, got {output_stride}")
        super().__init__(output_stride=8, freeze_bn=freeze_bn, bn_affine_trainable=bn_affine_trainable)
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)

        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)

        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)

        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)

        self.b5 = ResBlock(512, 512, 1024, stride=1, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)

        self.b6 = ResBlock_bot(1024, 2048, stride=1, dilation=4, dropout=0.3)
        self.b7 = ResBlock_bot(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        self._freeze()

    def frozen_modules(self) -> list[nn.Module]:
        """conv1a and stage 2 (the reference's ``not_training``)."""
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [conv4 (B, 512, h, w), conv5 (B, 1024, h, w), conv6 (B, 4096, h, w)], h = ceil(H/8)."""
        x = self.conv1a(x)
        x = self.b2_2(self.b2_1(self.b2(x)))
        x = self.b3_2(self.b3_1(self.b3(x)))
        x = self.b4(x)
        x = self.b4_5(self.b4_4(self.b4_3(self.b4_2(self.b4_1(x)))))
        x, conv4 = self.b5(x, get_x_bn_relu=True)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6(x, get_x_bn_relu=True)
        x = self.b7(x)
        conv6 = F.relu(self.bn7(x))
        return [conv4, conv5, conv6]
