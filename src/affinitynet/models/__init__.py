"""Backbones (plain-dict factory) and the pipeline's networks: Classifier, AffinityNet, DeepLab."""
from __future__ import annotations

from functools import partial

from ..errors import ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .boundary import BoundaryNet
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
from .efficientnet import VARIANTS as LITE_VARIANTS
from .efficientnet import EfficientNetLite
from .resnet import ResNet
from .resnet38 import ResNet38
from .tiny import TinyNet

BACKBONES = {
    "resnet38": ResNet38,
    "resnet50": partial(ResNet, "resnet50"),
    "resnet101": partial(ResNet, "resnet101"),
    "tiny": TinyNet,
    **{name: partial(EfficientNetLite, name) for name in LITE_VARIANTS},
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
    net = Classifier(_backbone_from(section), num_classes)
    net.model_args = {"network": "classifier", "backbone": section.backbone, "output_stride": section.output_stride,
                      "num_classes": num_classes}
    return net


def build_affinitynet(section) -> AffinityNet:
    """AffinityNet from an ``AffinityNetConfig`` (backbone, pretrained, output_stride)."""
    net = AffinityNet(_backbone_from(section), stride=section.embed_stride, fine_depth=section.fine_depth)
    net.model_args = {"network": "affinitynet", "backbone": section.backbone, "output_stride": section.output_stride}
    if section.embed_stride:
        net.model_args["embed_stride"] = section.embed_stride
    if section.fine_depth:
        net.model_args["fine_depth"] = True
    return net


def build_deeplab(section, num_classes: int) -> DeepLab:
    """DeepLab from a ``SegmentationConfig`` (backbone, pretrained, output_stride, head); K classes incl. background."""
    net = DeepLab(_backbone_from(section), num_classes, head=section.head, rate=section.head_rate,
                  dropout=section.head_dropout)
    net.model_args = {"network": "deeplab", "backbone": section.backbone, "output_stride": section.output_stride,
                      "num_classes": num_classes, "head": section.head, "rate": section.head_rate}
    return net


def build_boundary(section) -> BoundaryNet:
    """IRN's boundary network from a ``BoundaryConfig`` (backbone, pretrained, output_stride, dilated)."""
    options = {} if section.dilated else {"dilated": False}
    backbone = build_backbone(section.backbone, output_stride=section.output_stride, pretrained=section.pretrained,
                              **options)
    net = BoundaryNet(backbone)
    net.model_args = {"network": "boundary", "backbone": section.backbone, "output_stride": section.output_stride,
                      **options}
    return net


def build_from_args(args: dict):
    """Rebuild a network, without initial weights, from the ``model_args`` its checkpoint stores."""
    args = dict(args)
    kind = args.pop("network", None)
    makers = {
        "classifier": lambda b: Classifier(b, args["num_classes"]),
        "affinitynet": lambda b: AffinityNet(b, stride=args.get("embed_stride", 0),
                                             fine_depth=args.get("fine_depth", False)),
        "deeplab": lambda b: DeepLab(b, args["num_classes"], head=args["head"], rate=args["rate"]),
        "boundary": BoundaryNet,
    }
    if kind not in makers:
        raise ConfigError(f"cannot rebuild a network of kind {kind!r} (known: {', '.join(makers)})")
    options = {"dilated": args["dilated"]} if "dilated" in args else {}
    net = makers[kind](build_backbone(args["backbone"], output_stride=args["output_stride"], **options))
    net.model_args = {"network": kind, **args}
    return net


__all__ = [
    "ASPP",
    "AffinityNet",
    "BACKBONES",
    "Backbone",
    "BoundaryNet",
    "Classifier",
    "DeepLab",
    "EfficientNetLite",
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LargeFOV",
    "ResNet",
    "ResNet38",
    "TinyNet",
    "build_affinitynet",
    "build_backbone",
    "build_boundary",
    "build_classifier",
    "build_deeplab",
    "build_from_args",
    "deeplab_num_classes",
    "guess_backbone",
    "load_backbone_weights",
    "load_checkpoint_into",
    "load_reference_checkpoint",
    "read_state_dict",
    "reference_to_ours",
    "resolve_pretrained",
]
