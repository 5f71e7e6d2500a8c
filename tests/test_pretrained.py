"""Pretrained weights: MXNet ``.params`` files read without MXNet, ademxapp's ResNet-38 names, ``pretrained: imagenet``.

The ``.params`` fixtures and the JSON next to each (what real MXNet 1.9.1 reads from them) come from
``tests/data/mxnet/make_fixtures.py``. The download tests use a loopback HTTP server; nothing touches the internet.
"""
import functools
import hashlib
import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from affinitynet.errors import ConfigError, DataError
from affinitynet.models import build_backbone, read_state_dict, resolve_pretrained
from affinitynet.models.checkpoint import load_state_checked
from affinitynet.models.mxnet_params import (
    is_params_file,
    read_ndarray_list,
    read_params,
    resnet38_from_mxnet,
    resnet38_keys,
)
from affinitynet.models.pretrained import IMAGENET_URLS

MXNET = Path(__file__).parent / "data" / "mxnet"
ORACLE_FIXTURES = ["dtypes", "list", "np_shape", "legacy_v1", "legacy_uint32", "resnet38_names"]
RESNET38 = MXNET / "resnet38_names.params"


def _oracle(name: str) -> dict:
    return json.loads((MXNET / f"{name}.json").read_text())


def _copy_with(tmp_path, fixture: str, data: bytes, suffix: str = ".params") -> Path:
    path = tmp_path / f"{fixture}{suffix}"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ the reader against MXNet's own reading

@pytest.mark.parametrize("fixture", ORACLE_FIXTURES)
def test_reader_matches_mxnet(fixture):
    expected = _oracle(fixture)
    arrays, names = read_ndarray_list(MXNET / f"{fixture}.params")
    assert names == (expected["names"] or [])
    assert len(arrays) == len(expected["arrays"])
    for array, want in zip(arrays, expected["arrays"]):
        assert (str(array.dtype), list(array.shape)) == (want["dtype"], want["shape"])
        # byte for byte, so -0.0, float16 rounding and int64 beyond 2**53 count too
        assert array.tobytes() == np.array(want["values"], dtype=want["dtype"]).tobytes()


def test_read_params_needs_names():
    assert set(read_params(MXNET / "dtypes.params")) == set(_oracle("dtypes")["names"])
    with pytest.raises(DataError, match="2 unnamed arrays"):
        read_params(MXNET / "list.params")


def test_is_params_file(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    assert is_params_file(RESNET38) and is_params_file(MXNET / "list.params")
    assert not is_params_file(tmp_path / "w.pth")


# ------------------------------------------------------------------ malformed files: always a DataError naming the file

def test_every_truncation_is_a_data_error(tmp_path):
    data = (MXNET / "dtypes.params").read_bytes()
    for end in range(len(data)):
        path = _copy_with(tmp_path, "cut", data[:end])
        with pytest.raises(DataError) as err:
            read_ndarray_list(path)
        assert str(path) in str(err.value), end


def test_file_cut_in_the_name_list(tmp_path):
    data = (MXNET / "dtypes.params").read_bytes()
    path = _copy_with(tmp_path, "cut", data[:-3])  # the last name, "aux:count", loses 3 of its 9 bytes
    with pytest.raises(DataError, match=r"truncated: name 8 of 8 needs 9 bytes, 6 left") as err:
        read_state_dict(path)
    assert err.value.path == str(path)


def test_wrong_magic(tmp_path):
    data = bytearray((MXNET / "list.params").read_bytes())
    data[0] = 0x13
    path = _copy_with(tmp_path, "magic", bytes(data))
    with pytest.raises(DataError, match=r"not an MXNet \.params file \(magic 0x113, expected 0x112\)") as err:
        read_state_dict(path)  # the suffix sends it to the MXNet reader, which names the problem
    assert str(path) in str(err.value)


def test_trailing_bytes_sparse_and_bfloat16(tmp_path):
    data = (MXNET / "list.params").read_bytes()
    with pytest.raises(DataError, match="2 unexpected bytes after the name list"):
        read_ndarray_list(_copy_with(tmp_path, "tail", data + b"\0\0"))
    with pytest.raises(DataError, match="array 1 of 1 is stored as row_sparse; only dense arrays are supported"):
        read_ndarray_list(MXNET / "sparse.params")
    # header 24 bytes; array 1: magic, storage, ndim (4 each), two int64 dims, device type and id, then its dtype
    flag = 24 + 12 + 16 + 8
    assert data[flag:flag + 4] == b"\0\0\0\0"  # float32
    bf16 = data[:flag] + (12).to_bytes(4, "little") + data[flag + 4:]
    with pytest.raises(DataError, match=r"array 1 of 2 has unsupported dtype flag 12 \(bfloat16\)"):
        read_ndarray_list(_copy_with(tmp_path, "bf16", bf16))


def test_corrupt_bytes_give_data_errors_only(tmp_path):
    """Overwriting any one byte yields a readable file or a DataError, never another exception."""
    data = (MXNET / "legacy_v1.params").read_bytes()
    for i in range(len(data)):
        for value in (0x00, 0x7F, 0xFF):
            path = _copy_with(tmp_path, "flip", data[:i] + bytes([value]) + data[i + 1:])
            try:
                read_ndarray_list(path)
            except DataError:
                pass


# ------------------------------------------------------------------ ademxapp's ResNet-38 names -> resnet38d keys

def test_resnet38_names_map_to_exactly_our_keys():
    oracle = _oracle("resnet38_names")
    state = read_state_dict(RESNET38)  # found by its magic number, renamed on the way
    assert len(oracle["names"]) == 193 and len(state) == 191  # + linear1000 weight and bias
    assert set(state) == set(resnet38_keys())
    for name, array in zip(oracle["names"], oracle["arrays"]):
        key = oracle["resnet38d"][name]
        if key is None:
            assert name.startswith("arg:linear1000_")
        else:
            assert state[key].tolist() == array["values"], name


def test_real_resnet38_shapes_fit_our_backbone():
    """The shapes MXNet infers for ademxapp's network are those of our ResNet38, key by key."""
    oracle, ours = _oracle("resnet38_names"), resnet38_keys()
    for name, key in oracle["resnet38d"].items():
        if key is not None:
            assert list(ours[key]) == oracle["shapes"][name], name


def test_mapped_full_size_state_loads_into_resnet38():
    oracle = _oracle("resnet38_names")
    rng = np.random.default_rng(0)
    params = {name: rng.random(shape, dtype=np.float32) for name, shape in oracle["shapes"].items()}
    backbone = build_backbone("resnet38")
    load_state_checked(backbone, resnet38_from_mxnet(params), "ademxapp")
    assert np.array_equal(backbone.conv1a.weight.detach().numpy(), params["arg:conv1a_weight"])
    assert np.array_equal(backbone.b4_3.conv_branch2a.weight.detach().numpy(), params["arg:res4b3_branch2a_weight"])
    assert np.array_equal(backbone.b7.bn_branch2b2.bias.detach().numpy(), params["arg:bn7a_branch2b2_beta"])
    assert np.array_equal(backbone.b5_2.bn_branch2b1.running_mean.numpy(), params["aux:bn5b2_branch2b1_moving_mean"])
    assert np.array_equal(backbone.bn7.running_var.numpy(), params["aux:bn7_moving_var"])


def test_names_without_prefix_map_too():
    params = read_params(RESNET38)
    plain = {name.split(":", 1)[1]: value for name, value in params.items()}
    assert set(resnet38_from_mxnet(plain)) == set(resnet38_keys())


def test_missing_extra_and_misprefixed_names_are_reported():
    params = read_params(RESNET38)
    del params["arg:res6a_branch2b2_weight"], params["aux:bn2b1_branch2a_moving_var"]
    params["arg:conv6a_weight"] = np.zeros(1, np.float32)  # e.g. the VOC model's segmentation head
    params["arg:bn7_moving_mean"] = params.pop("aux:bn7_moving_mean")  # running statistics are "aux:"
    with pytest.raises(DataError) as err:
        resnet38_from_mxnet(params, "voc.params")
    msg = str(err.value)
    assert msg.startswith("voc.params: not ademxapp's ResNet-38 weights: 2 names that are not ResNet-38 parameters: ")
    assert "arg:conv6a_weight" in msg and "arg:bn7_moving_mean" in msg
    assert "3 ResNet-38 parameters missing: " in msg
    for key in ("b6.conv_branch2b2.weight", "b2_1.bn_branch2a.running_var", "bn7.running_mean"):
        assert key in msg


def test_params_file_through_build_backbone():
    """The whole path from a ``pretrained`` setting; the fixture's 1-element arrays cannot fit, and it says so."""
    with pytest.raises(DataError, match=r"191 shape mismatches: conv1a.weight \(1,\) vs model \(64, 3, 3, 3\)") as err:
        build_backbone("resnet38", pretrained=str(RESNET38))
    assert err.value.path == str(RESNET38)
    with pytest.raises(DataError, match="checkpoint is for backbone resnet38, the model uses tiny"):
        build_backbone("tiny", pretrained=str(RESNET38))


# ------------------------------------------------------------------ pretrained: imagenet

class _Files(http.server.SimpleHTTPRequestHandler):
    requests: list

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A loopback HTTP server on a free port serving ``tmp_path/www``; yields (base URL, www dir, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    requests = []
    handler = functools.partial(type("Handler", (_Files,), {"requests": requests}), directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _publish(www: Path, stem: str, state: dict, hash_prefix: str | None = None) -> str:
    """Save ``state`` as ``stem-<sha256 prefix>.pth`` (or a given prefix) in ``www``; the file name."""
    tmp = www / "tmp.pth"
    torch.save(state, tmp)
    prefix = hash_prefix or hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    name = f"{stem}-{prefix}.pth"
    shutil.move(tmp, www / name)
    return name


def test_imagenet_downloads_once_then_uses_the_cache(server, tmp_path, monkeypatch):
    base, www, requests = server
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    name = _publish(www, "resnet50", state)
    monkeypatch.setitem(IMAGENET_URLS, "resnet50", f"{base}/{name}")
    first = resolve_pretrained("imagenet", "resnet50")
    assert first == str(tmp_path / "torch" / "hub" / "checkpoints" / name)
    assert torch.equal(torch.load(first, weights_only=True)["w"], state["w"])
    assert resolve_pretrained("imagenet", "resnet50") == first
    assert requests == [f"/{name}"]
    assert resolve_pretrained("weights/mine.pth", "resnet50") == "weights/mine.pth"


def test_imagenet_through_build_backbone(server, monkeypatch):
    base, www, requests = server
    source = build_backbone("tiny")
    name = _publish(www, "tiny", source.state_dict())
    monkeypatch.setitem(IMAGENET_URLS, "tiny", f"{base}/{name}")
    backbone = build_backbone("tiny", pretrained="imagenet")
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key


def test_imagenet_wrong_hash(server, monkeypatch):
    base, www, requests = server
    name = _publish(www, "resnet101", {"w": torch.zeros(2)}, hash_prefix="00000000")
    url = f"{base}/{name}"
    monkeypatch.setitem(IMAGENET_URLS, "resnet101", url)
    with pytest.raises(DataError, match="does not match the sha256 prefix in its name") as err:
        resolve_pretrained("imagenet", "resnet101")
    assert err.value.path == url and "set cam.pretrained" in str(err.value)
    assert not list((Path(torch.hub.get_dir()) / "checkpoints").iterdir())  # nothing half-done left in the cache


def test_imagenet_network_failure(server, monkeypatch):
    base, www, requests = server
    monkeypatch.setitem(IMAGENET_URLS, "resnet50", f"{base}/resnet50-0676ba61.pth")  # not served: 404
    with pytest.raises(DataError, match=r"cannot download \(HTTP Error 404: File not found\); download the file by "
                                        r"hand and set cam.pretrained, affinitynet.pretrained or segmentation"):
        resolve_pretrained("imagenet", "resnet50")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/resnet50-0676ba61.pth"
    monkeypatch.setitem(IMAGENET_URLS, "resnet50", url)
    with pytest.raises(DataError, match="cannot download .*refused") as err:
        build_backbone("resnet50", pretrained="imagenet")
    assert err.value.path == url and "\n" not in str(err.value)


def test_imagenet_for_backbones_without_a_download():
    with pytest.raises(ConfigError, match="ilsvrc-cls_rna-a1_cls1000_ep-0001.params; download the file by hand and set "
                                          "cam.pretrained"):
        build_backbone("resnet38", pretrained="imagenet")
    with pytest.raises(ConfigError, match="no ImageNet weights for backbone tiny"):
        build_backbone("tiny", pretrained="imagenet")
