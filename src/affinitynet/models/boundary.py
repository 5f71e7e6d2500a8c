"""The class boundary network of IRN (Ahn, Cho & Kwak, CVPR 2019): a frozen backbone's feature levels, each reduced
to 32 channels, brought to the stride-4 grid, concatenated and mixed into one boundary logit per cell."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone
from .nets import _Net

STRIDE = 4  # the boundary map's grid
SIDE_WIDTH = 32


class BoundaryNet(_Net):
    """Backbone levels -> 1x1 conv + GroupNorm(4, 32), bilinear upsampling to stride 4, ReLU -> concat -> 1x1 conv.

    The backbone stays frozen (its weights and BatchNorm statistics, as IRN detaches every stage), so only the
    side layers and the last convolution train.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        strides = backbone.level_strides
        if not strides or strides[0] != STRIDE:
            raise ConfigError(f"backbone {backbone.name} gives no stride-{STRIDE} feature levels "
                              f"(the boundary network needs them)")
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.sides = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, SIDE_WIDTH, 1, bias=False), nn.GroupNorm(4, SIDE_WIDTH))
            for c in backbone.level_channels)
        self.fuse = nn.Conv2d(SIDE_WIDTH * len(self.sides), 1, 1, bias=True)

    def new_modules(self) -> list[nn.Module]:
        """The side layers and the fusing convolution."""
        return [self.sides, self.fuse]

    def param_groups(self):
        """Every trainable parameter in the first group (base learning rate, weight decay on all), as IRN trains
        its edge layers; the other three groups are empty."""
        return [p for p in self.parameters() if p.requires_grad], [], [], []

    def train(self, mode: bool = True):
        """Training mode for the new layers; the backbone stays in eval."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1, ceil(H/4), ceil(W/4)) boundary logits (sigmoid: the map)."""
        with torch.no_grad():
            feats = self.backbone.levels(x)
        h, w = feats[0].shape[-2:]
        sides = []
        for f, side, stride in zip(feats, self.sides, self.backbone.level_strides):
            y = side(f)
            if stride != STRIDE:
                y = F.interpolate(y, scale_factor=stride // STRIDE, mode="bilinear", align_corners=False)
            sides.append(F.relu(y[..., :h, :w]))
        return self.fuse(torch.cat(sides, dim=1))

    @torch.no_grad()
    def boundary_map(self, x: torch.Tensor, *, flip: bool = True, min_size: int = 0) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1, ceil(H/4), ceil(W/4)) class boundary map in [0, 1].

        ``flip``: the logits of each image and of its mirror image (mirrored back) are averaged; ``min_size``:
        a smaller input is zero-padded (right, bottom) to it first, as IRN pads to its training crop so that
        GroupNorm sees what it saw in training.
        """
        h, w = -(-x.shape[-2] // STRIDE), -(-x.shape[-1] // STRIDE)
        b = x.shape[0]
        if flip:
            x = torch.cat([x, x.flip(-1)])
        pad = (0, max(0, min_size - x.shape[-1]), 0, max(0, min_size - x.shape[-2]))
        logits = self(F.pad(x, pad) if any(pad) else x)[..., :h, :w]
        if flip:
            logits = (logits[:b] + logits[b:].flip(-1)) / 2
        return torch.sigmoid(logits)
