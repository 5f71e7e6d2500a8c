"""Write the MXNet ``.params`` fixtures of tests/test_pretrained.py, and next to each MXNet's own reading of it.

Run by hand with real MXNet 1.9.1. It needs NumPy < 1.24, so it lives in a throwaway environment:

    python3.11 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install mxnet==1.9.1 numpy==1.23.5
    /tmp/mxvenv/bin/python tests/data/mxnet/make_fixtures.py

For every ``NAME.params`` it writes ``NAME.json``: what ``mx.nd.load`` (``mx.npx.load`` for the NumPy-shape
file) returns, i.e. the names (null for a plain list) and per array its dtype, shape and flat values. The tests
compare our reader against these JSON files and never import MXNet.

- ``dtypes``: a dict with ``arg:``/``aux:`` names, every dense dtype and a 1-element array (V2 arrays).
- ``list``: ``mx.nd.save`` of a list, so the file holds no names.
- ``np_shape``: saved with NumPy shape semantics (V3 arrays), with a 0-d and an empty array (a
  zero dimension means "unknown" outside these semantics, so ``mx.nd`` cannot make one).
- ``legacy_v1`` / ``legacy_uint32``: the two older array layouts that MXNet 1.9.1 still reads but no longer
  writes (int64 shapes without a storage type; the array count doubling as ndim with uint32 dims). They are
  built here byte by byte, then read back by MXNet, so the JSON is MXNet's reading of them, not ours.
- ``sparse``: a row-sparse array, which our reader refuses.
- ``resnet38_names``: every parameter of ademxapp's ImageNet ResNet-38 ("Model A1", the network of
  ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``), saved with ``mx.model.save_checkpoint`` as ademxapp's training
  did, so the names carry MXNet's ``arg:``/``aux:`` prefixes. The arrays hold one value (their index) to keep the
  file small; the JSON adds each parameter's real shape (MXNet's ``infer_shape`` of the network) and the
  ``resnet38d`` key it belongs to, recorded while the network is built below.
"""
import json
import shutil
import struct
import tempfile
from pathlib import Path

import mxnet as mx
import numpy as np

HERE = Path(__file__).resolve().parent
LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
DTYPE_FLAGS = {"float32": 0, "float64": 1, "float16": 2, "uint8": 3, "int32": 4, "int8": 5, "int64": 6}
BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}


def dump(name: str, loaded, **extra) -> None:
    """Write MXNet's reading of ``name.params`` (a dict or a list of NDArrays) as ``name.json``."""
    names = list(loaded) if isinstance(loaded, dict) else None
    arrays = list(loaded.values()) if isinstance(loaded, dict) else list(loaded)
    entries = []
    for array in arrays:
        values = array.asnumpy()
        entries.append({"dtype": str(values.dtype), "shape": list(values.shape), "values": values.ravel().tolist()})
    doc = {"mxnet": mx.__version__, "names": names, "arrays": entries, **extra}
    (HERE / f"{name}.json").write_text(json.dumps(doc) + "\n")


def save_and_dump(name: str, data) -> None:
    path = str(HERE / f"{name}.params")
    mx.nd.save(path, data)
    dump(name, mx.nd.load(path))


def dtypes_fixture() -> None:
    data = {
        "arg:conv_weight": mx.nd.array(np.arange(12).reshape(2, 3, 1, 2) / 8 - 0.75, dtype="float32"),
        "arg:bn_gamma": mx.nd.array([0.5, -2.0, 65504.0, 6.1e-5], dtype="float16"),
        "aux:bn_moving_var": mx.nd.array([1 / 3, 1e-300, -0.0], dtype="float64"),
        "arg:one": mx.nd.array([7.25], dtype="float32"),
        "arg:pixels": mx.nd.array([[0, 1], [128, 255]], dtype="uint8"),
        "arg:index": mx.nd.array([-2147483648, -1, 0, 2147483647], dtype="int32"),
        "arg:offset": mx.nd.array([-128, 0, 127], dtype="int8"),
        "aux:count": mx.nd.array(np.array([-(2 ** 62), 2 ** 53 + 1], dtype=np.int64), dtype="int64"),
    }
    save_and_dump("dtypes", data)


def list_fixture() -> None:
    save_and_dump("list", [mx.nd.array([[1.5, 2.5], [3.5, 4.5]]), mx.nd.array([3, 2, 1], dtype="int32")])


def np_shape_fixture() -> None:
    path = str(HERE / "np_shape.params")
    with mx.util.np_shape(True), mx.util.np_array(True):
        mx.npx.save(path, {"scalar": mx.np.array(2.5, dtype="float32"),
                           "matrix": mx.np.array([[1, 2, 3], [4, 5, 6]], dtype="float64"),
                           "empty": mx.np.zeros((0, 3), dtype="float32")})
        dump("np_shape", mx.npx.load(path))


def _legacy_array(values: np.ndarray, *, v1: bool, dev_type: int = 1) -> bytes:
    """One array in a pre-storage-type layout: V1 (magic, int32 ndim, int64 dims) or older (uint32 ndim and dims)."""
    if v1:
        head = struct.pack("<Ii", V1_MAGIC, values.ndim) + struct.pack(f"<{values.ndim}q", *values.shape)
    else:
        head = struct.pack(f"<I{values.ndim}I", values.ndim, *values.shape)
    context = struct.pack("<ii", dev_type, 0)
    flag = struct.pack("<i", DTYPE_FLAGS[str(values.dtype)])
    return head + context + flag + values.astype(values.dtype.newbyteorder("<")).tobytes()


def _list_file(arrays: list[bytes], names: list[str]) -> bytes:
    out = struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays)) + b"".join(arrays)
    out += struct.pack("<Q", len(names))
    for name in names:
        out += struct.pack("<Q", len(name.encode())) + name.encode()
    return out


def legacy_fixtures() -> None:
    v1 = [_legacy_array(np.array([[0.25, -1.0, 3.0]], dtype=np.float32), v1=True),
          _legacy_array(np.array([9, 8], dtype=np.int64), v1=True)]
    (HERE / "legacy_v1.params").write_bytes(_list_file(v1, ["arg:w", "aux:n"]))
    dump("legacy_v1", mx.nd.load(str(HERE / "legacy_v1.params")))
    # the second array claims to come from GPU 0; MXNet (and we) load it on the CPU all the same
    old = [_legacy_array(np.arange(6, dtype=np.float32).reshape(1, 2, 3), v1=False),
           _legacy_array(np.array([1.0, 0.5], dtype=np.float64), v1=False, dev_type=2)]
    (HERE / "legacy_uint32.params").write_bytes(_list_file(old, ["arg:a", "arg:b"]))
    dump("legacy_uint32", mx.nd.load(str(HERE / "legacy_uint32.params")))


def sparse_fixture() -> None:
    dense = np.array([[0, 0], [1, 2], [0, 0]], dtype=np.float32)
    mx.nd.save(str(HERE / "sparse.params"), {"arg:rows": mx.nd.array(dense).tostype("row_sparse")})


class ResNet38Symbol:
    """ademxapp's ImageNet ResNet-38 (Model A1) as an MXNet symbol, recording each parameter's resnet38d key.

    Layer names follow ademxapp: ``conv1a``; per block (``2a``, ``2b1``, ..., ``7a``) a BatchNorm ``bn<block>_<branch>``
    and a convolution ``res<block>_<branch>`` per branch ``branch2a``, ``branch2b1`` (, ``branch2b2``), a 1x1
    shortcut ``res<block>_branch1`` on each stage's first block; then ``bn7`` and the classifier ``linear1000``.
    """

    def __init__(self):
        self.ours = {}  # MXNet parameter name (no prefix) -> resnet38d key, None for the classifier
        x = self.conv(mx.sym.Variable("data"), "conv1a", "conv1a", 64, 3)
        stages = [(2, 3, [128, 128]), (3, 3, [256, 256]), (4, 6, [512, 512]), (5, 3, [512, 1024])]
        for stage, blocks, filters in stages:
            for i in range(blocks):
                x = self.block(x, stage, i, filters, [3, 3], stride=2 if i == 0 and stage < 5 else 1)
        x = self.block(x, 6, 0, [512, 1024, 2048], [1, 3, 1])
        x = self.block(x, 7, 0, [1024, 2048, 4096], [1, 3, 1])
        x = self.bn_relu(x, "bn7", "bn7")
        x = mx.sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg")
        self.symbol = mx.sym.FullyConnected(x, name="linear1000", num_hidden=1000)
        self.ours.update({"linear1000_weight": None, "linear1000_bias": None})

    def conv(self, x, name, ours, filters, kernel, stride=1):
        self.ours[f"{name}_weight"] = f"{ours}.weight"
        return mx.sym.Convolution(x, name=name, num_filter=filters, kernel=(kernel, kernel), stride=(stride, stride),
                                  pad=(kernel // 2, kernel // 2), no_bias=True)

    def bn_relu(self, x, name, ours):
        self.ours.update({f"{name}_{mx_param}": f"{ours}.{param}" for mx_param, param in BN_PARAMS.items()})
        return mx.sym.Activation(mx.sym.BatchNorm(x, name=name, fix_gamma=False), act_type="relu")

    def block(self, x, stage, index, filters, kernels, stride=1):
        mx_block = f"{stage}a" if index == 0 else f"{stage}b{index}"
        ours = f"b{stage}" if index == 0 else f"b{stage}_{index}"
        branches = ["branch2a"] + [f"branch2b{i}" for i in range(1, len(filters))]
        y = x
        for i, (branch, width, kernel) in enumerate(zip(branches, filters, kernels)):
            y = self.bn_relu(y, f"bn{mx_block}_{branch}", f"{ours}.bn_{branch}")
            if i == 0:
                pre_activation = y
            y = self.conv(y, f"res{mx_block}_{branch}", f"{ours}.conv_{branch}", width, kernel, stride if i == 0 else 1)
        if index > 0:
            return x + y
        shortcut = self.conv(pre_activation, f"res{mx_block}_branch1", f"{ours}.conv_branch1", filters[-1], 1, stride)
        return shortcut + y


def resnet38_fixture() -> None:
    net = ResNet38Symbol()
    arg_shapes, _, aux_shapes = net.symbol.infer_shape(data=(1, 3, 224, 224))
    args = [n for n in net.symbol.list_arguments() if n != "data"]
    shapes = dict(zip(net.symbol.list_arguments(), arg_shapes)) | dict(zip(net.symbol.list_auxiliary_states(),
                                                                             aux_shapes))
    names = args + net.symbol.list_auxiliary_states()
    assert set(names) == set(net.ours), set(names) ^ set(net.ours)
    values = {name: mx.nd.array([i], dtype="float32") for i, name in enumerate(names)}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "resnet38")
        mx.model.save_checkpoint(prefix, 1, net.symbol, {n: values[n] for n in args},
                                 {n: values[n] for n in net.symbol.list_auxiliary_states()})
        shutil.move(f"{prefix}-0001.params", HERE / "resnet38_names.params")
    loaded = mx.nd.load(str(HERE / "resnet38_names.params"))
    plain = {key.split(":", 1)[1]: key for key in loaded}
    dump("resnet38_names", loaded,
         shapes={plain[n]: list(shapes[n]) for n in names},
         resnet38d={plain[n]: net.ours[n] for n in names})


if __name__ == "__main__":
    dtypes_fixture()
    list_fixture()
    np_shape_fixture()
    legacy_fixtures()
    sparse_fixture()
    resnet38_fixture()
    for path in sorted(HERE.glob("*.params")):
        print(f"{path.name}: {path.stat().st_size} bytes")
