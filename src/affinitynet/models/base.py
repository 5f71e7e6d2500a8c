"""The ``Backbone`` base class: three feature depths at output stride 8, frozen stages, frozen BatchNorm."""
from __future__ import annotations

import torch
from torch import nn

from ..conventions import IMAGENET_MEAN, IMAGENET_STD


class Backbone(nn.Module):
    """A feature extractor returning three depths (low -> high) on the same stride-8 grid.

    Subclasses set ``name``, ``channels`` and ``output_stride``, list their frozen stages in
    ``frozen_modules()`` and call ``self._freeze()`` at the end of ``__init__``.

    ``freeze_bn``: every BatchNorm layer stays in eval mode (running statistics fixed) even
    when the network trains. ``bn_affine_trainable``: whether BatchNorm weight/bias outside the
    frozen stages still receive gradients. Parameters of ``frozen_modules()`` never do.
    """

    name: str = "backbone"
    channels: tuple[int, int, int] = (0, 0, 0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, *, output_stride: int = 8, freeze_bn: bool = False, bn_affine_trainable: bool = True):
        super().__init__()
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn
        self.bn_affine_trainable = bn_affine_trainable

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature (what a classifier or DeepLab head reads)."""
        return self.channels[-1]

    def frozen_modules(self) -> list[nn.Module]:
        """Modules whose parameters stay fixed during fine-tuning (their BatchNorm stays in eval)."""
        return []

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        if not self.bn_affine_trainable:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    for p in module.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True):
        """Set training mode, keeping frozen BatchNorm layers (all of them if ``freeze_bn``) in eval."""
        super().train(mode)
        if mode:
            frozen = self.modules() if self.freeze_bn else (m for f in self.frozen_modules() for m in f.modules())
            for module in frozen:
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB on the 0..1 scale -> (B, 3, H, W) normalised with ``mean``/``std``."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the feature grid for an H x W input: ceil(H / stride), ceil(W / stride)."""
        s = self.output_stride
        return -(-height // s), -(-width // s)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> features of every depth, shallowest first, the first at stride 4 (see ``level_strides``)."""
        from ..errors import ConfigError

        raise ConfigError(f"backbone {self.name} gives no stride-4 feature levels (the boundary network needs them)")

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Stride of each of ``levels``' features."""
        return ()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        """(B, 3, H, W) normalised images -> three (B, channels[i], ceil(H/s), ceil(W/s)) features."""
        raise NotImplementedError
