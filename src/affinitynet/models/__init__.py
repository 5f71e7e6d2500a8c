"""Backbones (plain-dict factory) and the pipeline's networks: Classifier, AffinityNet, DeepLab."""
from __future__ import annotations

from functools import partial

from ..errors import ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .checkpoint import (
    deeplab_num_classes,
    guess_backbone,
    load_backbone_weights,
    load_checkpoint_into,
    load_reference_checkpoint,
    read_state_dict,
    reference_to_ours,
)
from .nets import ASPP, HEADS, AffinityNet, Classifier, DeepLab, LargeFOV
from .pretrained import resolve_pretrained
from .resnet import ResNet
from .resnet38 import ResNet38
from .tiny import TinyNet

BACKBONES = {
    "resnet38": ResNet38,
    "resnet50": partial(ResNet, "resnet50"),
    "resnet101": partial(ResNet, "resnet101"),
    "tiny": TinyNet,
}


def build_backbone(name: str, *, output_stride: int = 8, pretrained: str = "", **options) -> Backbone:
    """A backbone by name (see ``BACKBONES``), with weights from the file ``pretrained`` (or ``imagenet``) if given."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}' (valid: {', '.join(BACKBONES)})")
    weights = resolve_pretrained(pretrained, name)
    backbone = BACKBONES[name](output_stride=output_stride, **options)
    if weights:
        load_backbone_weights(backbone, weights)
    return backbone


def _backbone_from(section) -> Backbone:
    return build_backbone(section.backbone, output_stride=section.output_stride, pretrained=section.pretrained)


def build_classifier(section, num_classes: int) -> Classifier:
    """Classifier from a ``CamConfig`` (backbone, pretrained, output_stride) with C foreground classes."""
    return Classifier(_backbone_from(section), num_classes)


def build_affinitynet(section) -> AffinityNet:
    """AffinityNet from an ``AffinityNetConfig`` (backbone, pretrained, output_stride)."""
    return AffinityNet(_backbone_from(section))


def build_deeplab(section, num_classes: int) -> DeepLab:
    """DeepLab from a ``SegmentationConfig`` (backbone, pretrained, output_stride, head); K classes incl. background."""
    return DeepLab(_backbone_from(section), num_classes, head=section.head, rate=section.head_rate)


__all__ = [
    "ASPP",
    "AffinityNet",
    "BACKBONES",
    "Backbone",
    "Classifier",
    "DeepLab",
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LargeFOV",
    "ResNet",
    "ResNet38",
    "TinyNet",
    "build_affinitynet",
    "build_backbone",
    "build_classifier",
    "build_deeplab",
    "deeplab_num_classes",
    "guess_backbone",
    "load_backbone_weights",
    "load_checkpoint_into",
    "load_reference_checkpoint",
    "read_state_dict",
    "reference_to_ours",
    "resolve_pretrained",
]
