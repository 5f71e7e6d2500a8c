"""The three networks of the pipeline on top of a ``Backbone``: Classifier (CAM), AffinityNet, DeepLab."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone

HEADS = ("largefov", "aspp")


class _Net(nn.Module):
    """A backbone plus newly initialised layers; ``param_groups`` splits parameters for the 1/2/10/20 LR rule."""

    backbone: Backbone

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (LR x10 / x20)."""
        raise NotImplementedError

    def class_param_names(self) -> list[str]:
        """State-dict keys whose first dimension is the number of classes."""
        return []

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
        """(backbone weights, backbone biases incl. BN, new weights, new biases); frozen parameters left out."""
        new = {id(p) for m in self.new_modules() for p in m.parameters()}
        groups: tuple[list, list, list, list] = ([], [], [], [])
        for p in self.parameters():
            if p.requires_grad:
                groups[(2 if id(p) in new else 0) + (0 if p.ndim > 1 else 1)].append(p)
        return groups


class Classifier(_Net):
    """Backbone -> (dropout) -> global average pooling -> 1x1 conv without bias; CAMs from the same weights."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float | None = None):
        super().__init__()
        if dropout is None:
            dropout = 0.5 if backbone.name == "resnet38" else 0.0  # the reference's dropout7
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def new_modules(self) -> list[nn.Module]:
        """The classifier."""
        return [self.classifier]

    def class_param_names(self) -> list[str]:
        """The classifier's weight."""
        return ["classifier.weight"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C) logits."""
        f = self.dropout(self.backbone(x)[-1])
        f = f.mean(dim=(2, 3), keepdim=True)
        return self.classifier(f).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w) class activation maps ReLU(W_c . f), no dropout."""
        return F.relu(F.conv2d(self.backbone(x)[-1], self.classifier.weight))


class AffinityNet(_Net):
    """Three backbone depths -> 1x1 conv + ELU each (64, 128, 256 ch) -> concat (448) -> 1x1 conv + ELU.

    The embedding lies on the grid of ``stride`` pixels (0: the backbone's output stride, the paper's): depths on a
    finer grid are average-pooled onto it, depths on a coarser one upsampled bilinearly (e.g. a stride-8 embedding
    from a stride-16 backbone, whose first depth is at stride 8). ``fine_depth`` adds the backbone's stride-4 depth
    as a fourth branch (32 ch, 480 in all), pooled onto the grid: a backbone whose deeper depths are upsampled
    onto the grid gives blurred object edges, and the stride-4 depth still holds them.
    """

    dims = (64, 128, 256)
    fine_dim = 32

    def __init__(self, backbone: Backbone, stride: int = 0, fine_depth: bool = False):
        super().__init__()
        self.backbone = backbone
        self.stride = stride or backbone.output_stride
        self.fine_depth = fine_depth
        c3, c4, c5 = backbone.channels
        if fine_depth:
            fine = [i for i, s in enumerate(backbone.level_strides) if s == 4]
            if not fine:
                raise ConfigError(f"backbone {backbone.name} gives no stride-4 depth (affinitynet.fine_depth)")
            self._fine_level = fine[-1]  # the deepest one (ResNet's layer1, not its stem)
            self.f8_2 = nn.Conv2d(backbone.level_channels[self._fine_level], self.fine_dim, 1, bias=False)
            nn.init.kaiming_normal_(self.f8_2.weight)
        self.f8_3 = nn.Conv2d(c3, self.dims[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(c4, self.dims[1], 1, bias=False)
        self.f8_5 = nn.Conv2d(c5, self.dims[2], 1, bias=False)
        self.f9 = nn.Conv2d(self.embed_dim, self.embed_dim, 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.kaiming_normal_(self.f8_5.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    @property
    def embed_dim(self) -> int:
        """Channels of the embedding (448; 480 with ``fine_depth``)."""
        return sum(self.dims) + (self.fine_dim if self.fine_depth else 0)

    def new_modules(self) -> list[nn.Module]:
        """f8_2 (with ``fine_depth``), f8_3, f8_4, f8_5, f9."""
        return ([self.f8_2] if self.fine_depth else []) + [self.f8_3, self.f8_4, self.f8_5, self.f9]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, embed_dim, h, w) embedding, h = ceil(H / stride)."""
        if self.fine_depth:
            levels = self.backbone.levels(x)
            f2, (f3, f4, f5) = levels[self._fine_level], levels[-3:]
            pairs = [(self.f8_2, f2)]
        else:
            f3, f4, f5 = self.backbone(x)
            pairs = []
        size = (-(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride))
        pairs += [(self.f8_3, f3), (self.f8_4, f4), (self.f8_5, f5)]
        f = torch.cat([F.elu(conv(_onto(feat, size))) for conv, feat in pairs], dim=1)
        return F.elu(self.f9(f))


def _onto(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h', w') -> (B, C, *size): average-pooled from a finer grid, upsampled bilinearly (cell centres aligned)
    from a coarser one by its integer factor and cropped."""
    if tuple(f.shape[-2:]) == tuple(size):
        return f
    if f.shape[-2] > size[0]:
        return F.adaptive_avg_pool2d(f, size)
    factor = -(-size[0] // f.shape[-2])
    return F.interpolate(f, scale_factor=factor, mode="bilinear", align_corners=False)[..., :size[0], :size[1]]


class LargeFOV(nn.Sequential):
    """DeepLab-v1 LargeFOV head: 3x3 dilation-12 conv, 1x1 conv (ReLU + dropout each), 1x1 to classes.

    The dropout is element-wise, as DeepLab's ``drop6`` / ``drop7`` layers (Caffe's Dropout), not whole
    channels: with a narrow head, channel dropout at 0.5 removes half of its features from every sample.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 1024, dropout: float = 0.5, rate: int = 12):
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=rate, dilation=rate), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(width, num_classes, 1),
        )
        for m in self:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self[-1].weight, std=0.01)


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: parallel 3x3 convs to classes with dilations (6, 12, 18, 24), summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, K, h, w)."""
        return sum(branch(x) for branch in self.branches)


class DeepLab(_Net):
    """Backbone's deepest feature -> LargeFOV or ASPP head -> per-pixel class logits at the feature stride."""

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "largefov", width: int | None = None,
                 dropout: float = 0.5, rate: int = 12):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown segmentation head '{head}' (valid: {', '.join(HEADS)})")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_name = head
        if head == "largefov":
            if width is None:
                width = 1024 if backbone.out_channels >= 1024 else 128
            self.head = LargeFOV(backbone.out_channels, num_classes, width=width, dropout=dropout, rate=rate)
        else:  # DeepLab-v2's (6, 12, 18, 24) for rate 12
            self.head = ASPP(backbone.out_channels, num_classes, tuple(max(1, rate * k // 2) for k in (1, 2, 3, 4)))

    def new_modules(self) -> list[nn.Module]:
        """The head."""
        return [self.head]

    def class_param_names(self) -> list[str]:
        """The head's last layer(s)."""
        if self.head_name == "largefov":
            n = len(self.head) - 1
            return [f"head.{n}.weight", f"head.{n}.bias"]
        return [f"head.branches.{i}.{p}" for i in range(len(self.head.branches)) for p in ("weight", "bias")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, K, h, w) logits, h = ceil(H / output_stride) (callers upsample)."""
        return self.head(self.backbone(x)[-1])
