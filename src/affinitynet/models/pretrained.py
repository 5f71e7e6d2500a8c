"""``pretrained: imagenet``: torchvision's ImageNet ResNet-50/101 weights, downloaded once into torch.hub's cache."""
from __future__ import annotations

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


def resolve_pretrained(name_or_path: str, backbone: str) -> str:
    """The weights file for a ``pretrained`` setting: a path as given, or for ``imagenet`` the downloaded file."""
    if name_or_path != IMAGENET:
        return name_or_path
    if backbone == "resnet38":
        raise ConfigError(f"pretrained=imagenet: the ResNet-38 ImageNet weights are ademxapp's MXNet file "
                          f"{RESNET38_FILE}; {BY_HAND}")
    if backbone not in IMAGENET_URLS:
        raise ConfigError(f"pretrained=imagenet: no ImageNet weights for backbone {backbone} "
                          f"(available for {', '.join(IMAGENET_URLS)})")
    return str(download(IMAGENET_URLS[backbone]))
