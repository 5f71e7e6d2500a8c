"""MXNet ``.params`` files read with numpy alone, and ademxapp's ResNet-38 names mapped to ``resnet38d`` keys.

The ResNet-38 ImageNet weights exist only as ademxapp's ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``, written by
``mx.nd.save``. That file is a list of NDArrays, little-endian throughout:

    file:   uint64 0x112 | uint64 0 (reserved) | uint64 n | n arrays | uint64 m | m names, m is 0 or n
    name:   uint64 byte length | UTF-8 bytes
    array:  uint32 magic, then by magic
            V2 0xF993FAC9, V3 0xF993FACA: int32 storage type (0 dense) | shape | context | int32 dtype | data
            V1 0xF993FAC8:                                              shape | context | int32 dtype | data
            anything else (oldest files): the magic is ndim, then ndim uint32 dims | context | int32 dtype | data
    shape:  int32 ndim | ndim int64 dims
    context: int32 device type | int32 device id (ignored: everything loads on the CPU)

V3 arrays come from MXNet's NumPy-shape mode, where a 0-d array is an ordinary scalar; elsewhere ndim 0 marks an
empty placeholder with nothing after its shape. Sparse arrays are refused.
"""
from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .resnet38 import ResNet38

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
MAX_LEGACY_NDIM = 32  # an oldest-layout "magic" is its ndim; anything larger is not an NDArray
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2", 9: "<u2",
          10: "<u4", 11: "<u8"}  # MXNet's dtype flags; 12 (bfloat16) has no numpy type
STORAGE = {1: "row_sparse", 2: "csr"}


class _Reader:
    """Sequential reads from an open file that turn every short read into a DataError naming the file."""

    def __init__(self, path: Path, file):
        self.path, self.file = path, file
        self.size = os.fstat(file.fileno()).st_size

    def left(self) -> int:
        return self.size - self.file.tell()

    def take(self, n: int, what: str) -> bytearray:
        if n > self.left():
            raise DataError(self.path, f"file is truncated: {what} needs {n} bytes, {self.left()} left")
        buf = bytearray(n)
        self.file.readinto(buf)
        return buf

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def is_params_file(path) -> bool:
    """True when ``path`` starts with the magic number of ``mx.nd.save``'s NDArray list."""
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and struct.unpack("<Q", head)[0] == LIST_MAGIC


def _read_array(r: _Reader, what: str) -> np.ndarray:
    (magic,) = r.unpack("I", what)
    if magic in (V2_MAGIC, V3_MAGIC):
        (storage,) = r.unpack("i", what)
        if storage != 0:
            kind = STORAGE.get(storage, f"unknown storage type {storage}")
            raise DataError(r.path, f"{what} is stored as {kind}; only dense arrays are supported")
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        (ndim,) = r.unpack("i", what)
        if ndim < -1 or (ndim == -1 and magic != V3_MAGIC):
            raise DataError(r.path, f"{what} has a corrupt shape (ndim {ndim})")
        shape = r.unpack(f"{max(ndim, 0)}q", what)
        empty = (ndim == 0 and magic != V3_MAGIC) or ndim == -1 or -1 in shape
    elif magic <= MAX_LEGACY_NDIM:
        shape = r.unpack(f"{magic}I", what)
        empty = magic == 0
    else:
        raise DataError(r.path, f"{what} has an unknown NDArray magic number 0x{magic:08x}")
    if empty:
        raise DataError(r.path, f"{what} is an empty NDArray placeholder without a shape")
    if any(d < 0 for d in shape):
        raise DataError(r.path, f"{what} has a corrupt shape {shape}")
    _device_type, _device_id, flag = r.unpack("iii", what)
    if flag not in DTYPES:
        raise DataError(r.path, f"{what} has unsupported dtype flag {flag}" + (" (bfloat16)" if flag == 12 else ""))
    dtype = np.dtype(DTYPES[flag])
    data = r.take(math.prod(shape) * dtype.itemsize, f"{what}'s data")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def read_ndarray_list(path) -> tuple[list[np.ndarray], list[str]]:
    """Arrays and names of an ``mx.nd.save`` file; the names are empty when a plain list was saved."""
    path = Path(path)
    with open(path, "rb") as f:
        r = _Reader(path, f)
        (magic,) = r.unpack("Q", "the header")
        if magic != LIST_MAGIC:
            raise DataError(path, f"not an MXNet .params file (magic 0x{magic:x}, expected 0x{LIST_MAGIC:x})")
        _reserved, n = r.unpack("QQ", "the header")
        arrays = [_read_array(r, f"array {i + 1} of {n}") for i in range(n)]
        (m,) = r.unpack("Q", "the name count")
        if m not in (0, n):
            raise DataError(path, f"holds {n} arrays but {m} names")
        names = []
        for i in range(m):
            what = f"name {i + 1} of {m}"
            (length,) = r.unpack("Q", what)
            try:
                names.append(r.take(length, what).decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(path, f"{what} is not UTF-8 text") from None
        if r.left():
            raise DataError(path, f"{r.left()} unexpected bytes after the name list")
    return arrays, names


def read_params(path) -> dict[str, np.ndarray]:
    """Name -> array of an ``mx.nd.save`` file of a dict (names as saved, e.g. ``arg:conv1a_weight``)."""
    arrays, names = read_ndarray_list(path)
    if arrays and not names:
        raise DataError(path, f"holds {len(arrays)} unnamed arrays (a saved list), parameter names are needed")
    if len(set(names)) != len(names):
        raise DataError(path, f"repeats names: {sorted({n for n in names if names.count(n) > 1})[:4]}")
    return dict(zip(names, arrays))


# ademxapp's parameter names: conv1a_weight; bn<block>_<branch>_<gamma|beta|moving_mean|moving_var> and
# res<block>_<branch>_weight, block 2a, 2b1, ..., 7a and branch branch1, branch2a, branch2b1, branch2b2;
# bn7_*; the ImageNet classifier linear1000_{weight,bias}. Checkpoints prefix learned parameters with "arg:"
# and BatchNorm running statistics with "aux:".
BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
RUNNING_STATS = ("moving_mean", "moving_var")
_BLOCK_NAME = re.compile(r"(bn|res)(\d)(a|b\d+)_(branch\w+?)_(weight|gamma|beta|moving_mean|moving_var)")
_BN7_NAME = re.compile(r"bn7_(gamma|beta|moving_mean|moving_var)")
_CLASSIFIER_NAME = re.compile(r"linear\d+_(weight|bias)")


def resnet38_key(name: str) -> str | None:
    """The ``resnet38d`` key of one ademxapp parameter name without prefix, '' for the classifier, None if unknown."""
    if name == "conv1a_weight":
        return "conv1a.weight"
    if _CLASSIFIER_NAME.fullmatch(name):
        return ""
    if m := _BN7_NAME.fullmatch(name):
        return f"bn7.{BN_PARAMS[m[1]]}"
    m = _BLOCK_NAME.fullmatch(name)
    if m is None:
        return None
    layer, stage, position, branch, param = m.groups()
    block = f"b{stage}" if position == "a" else f"b{stage}_{position[1:]}"
    if layer == "res":
        return f"{block}.conv_{branch}.weight" if param == "weight" else None
    return f"{block}.bn_{branch}.{BN_PARAMS[param]}" if param != "weight" else None


def _split_prefix(key: str) -> str | None:
    """The parameter name of a saved key: ``arg:`` for learned parameters, ``aux:`` for running stats, or none."""
    kind, sep, name = key.partition(":")
    if not sep:
        return key
    is_stat = name.endswith(RUNNING_STATS)
    return name if (kind, is_stat) in (("arg", False), ("aux", True)) else None


def resnet38_keys() -> dict[str, torch.Size]:
    """Shape of every ``resnet38d`` parameter and buffer of our backbone (``num_batches_tracked`` left out)."""
    with torch.device("meta"):
        state = ResNet38().state_dict()
    return {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}


def resnet38_from_mxnet(params: dict[str, np.ndarray], source="<params>") -> dict[str, torch.Tensor]:
    """ademxapp ResNet-38 arrays (``arg:``/``aux:`` names) -> a complete ``resnet38d`` state dict, classifier dropped.

    Raises a DataError naming ``source`` that lists the names no key fits and the keys no name fills.
    """
    state, unknown = {}, []
    for key, value in params.items():
        name = _split_prefix(key)
        ours = resnet38_key(name) if name is not None else None
        if ours is None or ours in state:
            unknown.append(key)
        elif ours:
            state[ours] = torch.from_numpy(value)
    missing = [k for k in resnet38_keys() if k not in state]
    problems = [f"{len(items)} {what}: {', '.join(items[:4])}" + (" ..." if len(items) > 4 else "")
                for what, items in (("names that are not ResNet-38 parameters", unknown),
                                    ("ResNet-38 parameters missing", missing)) if items]
    if problems:
        raise DataError(source, "not ademxapp's ResNet-38 weights: " + "; ".join(problems))
    return state


def read_resnet38_params(path) -> dict[str, torch.Tensor]:
    """The ``resnet38d`` state dict held by an ademxapp ResNet-38 ``.params`` file."""
    return resnet38_from_mxnet(read_params(path), path)

