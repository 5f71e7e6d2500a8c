"""Backbones and networks: shapes, gradients, frozen stages, checkpoint formats (reference ResNet-38, torchvision)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from affinitynet.config import AffinityNetConfig, CamConfig, SegmentationConfig
from affinitynet.errors import ConfigError, DataError
from affinitynet.models import (
    BACKBONES,
    AffinityNet,
    Classifier,
    DeepLab,
    build_affinitynet,
    build_backbone,
    build_classifier,
    build_deeplab,
    deeplab_num_classes,
    load_checkpoint_into,
    load_reference_checkpoint,
    reference_to_ours,
)

CHANNELS = {"tiny": (64, 128, 256), "resnet50": (512, 1024, 2048), "resnet101": (512, 1024, 2048),
            "resnet38": (512, 1024, 4096), "efficientnet_lite0": (40, 112, 1280),
            "efficientnet_lite1": (40, 112, 1280), "efficientnet_lite2": (48, 120, 1280)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def resnet38():
    """One ResNet-38 (105 M parameters) shared by the tests that do not depend on its weights."""
    return build_backbone("resnet38")


def _grid(size, stride):
    return math.ceil(size / stride)


# ---------------------------------------------------------------- backbones


def test_factory_lists_every_backbone():
    assert set(BACKBONES) == set(CHANNELS)


@pytest.mark.parametrize("name", ["tiny", "resnet50", "resnet101", "resnet38", "efficientnet_lite0"])
def test_backbone_forward_backward_odd_size(name, request):
    backbone = (request.getfixturevalue("resnet38") if name == "resnet38" else build_backbone(name)).train()
    backbone.zero_grad(set_to_none=True)
    assert backbone.channels == CHANNELS[name] and backbone.out_channels == CHANNELS[name][-1]
    assert len(backbone.mean) == 3 and len(backbone.std) == 3
    batch, height, width = (2, 33, 41) if name == "tiny" else (1, 33, 25)
    x = torch.randn(batch, 3, height, width)
    feats = backbone(x)
    assert len(feats) == 3
    for f, c in zip(feats, CHANNELS[name]):
        assert f.shape == (batch, c, _grid(height, 8), _grid(width, 8))
    sum(f.square().mean() for f in feats).backward()
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in backbone.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", ["resnet50", "tiny"])
def test_output_stride_16(name):
    backbone = build_backbone(name, output_stride=16).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 49, 35))
    assert feats[-1].shape[-2:] == (_grid(49, 16), _grid(35, 16))
    assert feats[1].shape[-2:] == (_grid(49, 16), _grid(35, 16))
    assert backbone.feature_size(49, 35) == (4, 3)


def test_resnet38_rejects_output_stride_16():
    with pytest.raises(ConfigError, match="output_stride"):
        build_backbone("resnet38", output_stride=16)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_backbone("vgg16")
    for name in BACKBONES:
        assert name in str(err.value)
    assert "vgg16" in str(err.value)


def test_tiny_receptive_field_covers_objects():
    """The centre feature must see pixels at least 30 px away in every direction (60+ px field)."""
    backbone = build_backbone("tiny").eval()
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)  # undo the zero init of residual branches' last BN
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    feats = backbone(x)
    feats[-1][0, :, 8, 8].sum().backward()
    seen = x.grad.abs().sum(dim=(0, 1)) > 0
    rows = seen.any(dim=1).nonzero().flatten()
    cols = seen.any(dim=0).nonzero().flatten()
    centre = 8 * 8 + 4
    assert rows.min() <= centre - 30 and rows.max() >= centre + 30
    assert cols.min() <= centre - 30 and cols.max() >= centre + 30


def test_tiny_trains_its_batchnorm():
    backbone = build_backbone("tiny").train()
    assert backbone.frozen_modules() == []
    assert all(p.requires_grad for p in backbone.parameters())
    bn = backbone.stem[0][1]
    assert bn.training
    before = bn.running_mean.clone()
    backbone(torch.randn(2, 3, 16, 16) + 3)
    assert not torch.equal(before, bn.running_mean)


def test_resnet38_freezing_follows_reference(resnet38):
    backbone = resnet38.train()
    frozen = {id(p) for m in backbone.frozen_modules() for p in m.parameters()}
    for name, p in backbone.named_parameters():
        if name.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2") or ".bn" in name or name.startswith("bn7"):
            assert not p.requires_grad, name
        else:
            assert p.requires_grad, name
    assert frozen
    assert all(not m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert backbone.b3.conv_branch2a.training  # train mode itself still applies (dropout in b6/b7)
    assert backbone.b6.dropout_2b1.training


def test_frozen_params_and_bn_stats_survive_an_optimizer_step():
    model = Classifier(build_backbone("resnet50"), 3).train()
    backbone = model.backbone
    frozen = [p for m in backbone.frozen_modules() for p in m.parameters()]
    assert frozen and all(not p.requires_grad for p in frozen)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    groups = model.param_groups()
    opt = torch.optim.SGD([{"params": g, "lr": lr} for g, lr in zip(groups, (0.1, 0.2, 1.0, 2.0))], momentum=0.9)
    logits = model(torch.randn(2, 3, 32, 32))
    F.multilabel_soft_margin_loss(logits, torch.tensor([[1.0, 0, 1], [0, 1, 0]])).backward()
    opt.step()
    after = model.state_dict()
    for key, value in snapshot.items():
        frozen_key = key.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))
        if frozen_key or "running_" in key or "num_batches" in key:
            assert torch.equal(value, after[key]), key
    assert not torch.equal(snapshot["backbone.layer4.2.conv3.weight"], after["backbone.layer4.2.conv3.weight"])
    assert not torch.equal(snapshot["classifier.weight"], after["classifier.weight"])
    assert not torch.equal(snapshot["backbone.layer4.2.bn3.weight"], after["backbone.layer4.2.bn3.weight"])


# ---------------------------------------------------------------- networks


def _make(kind, backbone):
    if kind == "classifier":
        return Classifier(backbone, 4)
    if kind == "affinitynet":
        return AffinityNet(backbone)
    return DeepLab(backbone, 5, head=kind.split("-")[1])


@pytest.mark.parametrize("kind, backbone_name", [
    ("classifier", "tiny"), ("affinitynet", "tiny"), ("deeplab-largefov", "tiny"), ("deeplab-aspp", "tiny"),
    ("classifier", "resnet50"), ("affinitynet", "resnet50"),
    pytest.param("deeplab-largefov", "resnet50", marks=pytest.mark.slow),  # 19 M-parameter head
    pytest.param("deeplab-aspp", "resnet50", marks=pytest.mark.slow),
])
def test_network_forward_backward(kind, backbone_name):
    model = _make(kind, build_backbone(backbone_name)).train()
    x = torch.randn(2, 3, 35, 27)
    h, w = _grid(35, 8), _grid(27, 8)
    out = model(x)
    expected = {"classifier": (2, 4), "affinitynet": (2, 448, h, w)}.get(kind, (2, 5, h, w))
    assert out.shape == expected
    out.square().mean().backward()
    groups = model.param_groups()
    flat = [id(p) for g in groups for p in g]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(flat) == sorted(trainable) and len(set(flat)) == len(flat)
    assert all(p.ndim > 1 for p in groups[0] + groups[2]) and all(p.ndim == 1 for p in groups[1] + groups[3])
    new = {id(p) for m in model.new_modules() for p in m.parameters()}
    assert {id(p) for p in groups[2] + groups[3]} == new
    assert all(p.grad is not None for g in groups for p in g)


def test_classifier_cam_matches_the_classifier_weights():
    model = Classifier(build_backbone("tiny"), 3).eval()
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        cam = model.cam(x)
        feat = model.backbone(x)[-1]
        logits = model(x)
    assert cam.shape == (1, 3, 5, 3)
    w = model.classifier.weight[:, :, 0, 0]
    expected = torch.einsum("kc,bchw->bkhw", w, feat).clamp(min=0)
    assert torch.allclose(cam, expected, atol=1e-5)
    assert torch.allclose(logits, torch.einsum("kc,bc->bk", w, feat.mean(dim=(2, 3))), atol=1e-5)


def test_classifier_dropout_defaults():
    assert isinstance(Classifier(build_backbone("tiny"), 2).dropout, nn.Identity)
    assert Classifier(build_backbone("tiny"), 2, dropout=0.3).dropout.p == 0.3


def test_affinitynet_output_stride_16_pools_the_first_depth():
    model = AffinityNet(build_backbone("resnet50", output_stride=16)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 49, 33)).shape == (1, 448, 4, 3)


@pytest.mark.parametrize("head", ["largefov", "aspp"])
def test_deeplab_num_classes_read_from_state(head):
    model = DeepLab(build_backbone("tiny"), 7, head=head)
    assert deeplab_num_classes(model.state_dict()) == 7
    assert deeplab_num_classes({"module." + k: v for k, v in model.state_dict().items()}) == 7
    with pytest.raises(DataError, match="not a DeepLab"):
        deeplab_num_classes(Classifier(build_backbone("tiny"), 3).state_dict(), source="cls.pth")


def test_largefov_dropout_is_element_wise_at_the_configured_rate():
    torch.manual_seed(0)
    model = build_deeplab(SegmentationConfig(head_dropout=0.3), 3)
    drops = [m for m in model.head if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.3, 0.3]
    x = drops[0].train()(torch.ones(2, 64, 8, 8))
    zero = (x == 0).float().mean(dim=(2, 3))  # per sample and channel: a share of the cells, not all or none
    assert ((zero > 0) & (zero < 1)).all()
    assert x.eq(0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert not [m for m in build_deeplab(SegmentationConfig(head_dropout=0.0), 3).head
                if isinstance(m, nn.Dropout) and m.p > 0]


def test_deeplab_rejects_unknown_head():
    with pytest.raises(ConfigError, match="largefov"):
        DeepLab(build_backbone("tiny"), 3, head="fcn")


def test_builders_take_config_sections_and_load_pretrained(tmp_path):
    source = build_backbone("tiny")
    path = tmp_path / "tiny_imagenet.pth"
    torch.save(source.state_dict(), path)
    cls = build_classifier(CamConfig(backbone="tiny", pretrained=str(path)), 6)
    aff = build_affinitynet(AffinityNetConfig(backbone="tiny", pretrained=str(path)))
    seg = build_deeplab(SegmentationConfig(backbone="tiny", pretrained=str(path), head="aspp"), 7)
    assert cls.classifier.out_channels == 6 and seg.num_classes == 7 and len(seg.head.branches) == 4
    for model in (cls, aff, seg):
        assert torch.equal(model.backbone.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    plain = build_classifier(CamConfig(backbone="tiny"), 6)
    assert not torch.equal(plain.backbone.layer3[1].conv2.weight, source.layer3[1].conv2.weight)


# ---------------------------------------------------------------- checkpoints


def test_our_checkpoint_round_trip(tmp_path):
    model = DeepLab(build_backbone("tiny"), 4)
    path = tmp_path / "seg.pth"
    torch.save({"model": model.state_dict(), "epoch": 3, "config": {"backbone": "tiny"}}, path)
    other = DeepLab(build_backbone("tiny"), 4)
    load_checkpoint_into(other, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save({"model": Classifier(build_backbone("tiny"), 3).state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        load_checkpoint_into(Classifier(build_backbone("tiny"), 3), path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="broken.pth"):
        build_backbone("tiny", pretrained=str(path))
    with pytest.raises(DataError, match="not found"):
        build_backbone("tiny", pretrained=str(tmp_path / "missing.pth"))


def test_wrong_number_of_classes_names_the_file(tmp_path):
    path = tmp_path / "cls20.pth"
    torch.save({"model": Classifier(build_backbone("tiny"), 20).state_dict()}, path)
    with pytest.raises(DataError) as err:
        load_checkpoint_into(Classifier(build_backbone("tiny"), 5), path)
    assert str(path) in str(err.value) and "20 classes" in str(err.value) and "5" in str(err.value)


def test_wrong_backbone_names_both(tmp_path):
    path = tmp_path / "tiny_cls.pth"
    torch.save({"model": Classifier(build_backbone("tiny"), 3).state_dict()}, path)
    with pytest.raises(DataError, match="backbone tiny.*resnet50"):
        load_checkpoint_into(Classifier(build_backbone("resnet50"), 3), path)


def test_mismatched_keys_are_listed(tmp_path):
    state = build_backbone("tiny").state_dict()
    state["layer1.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    del state["layer3.1.bn3.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as err:
        build_backbone("tiny", pretrained=str(path))
    msg = str(err.value)
    assert "odd.pth" in msg and "layer1.conv1.weight" in msg and "layer3.1.bn3.bias" in msg and "extra.weight" in msg


def _torchvision_resnet50_state():
    """Keys and shapes of torchvision's resnet50 ImageNet file (old format: no num_batches_tracked)."""
    state = {}

    def conv(name, cout, cin, k):
        state[name + ".weight"] = torch.randn(cout, cin, k, k) * math.sqrt(2.0 / (cin * k * k))

    def bn(name, c):
        state[name + ".weight"] = torch.rand(c) + 0.5
        state[name + ".bias"] = torch.randn(c) * 0.1
        state[name + ".running_mean"] = torch.randn(c) * 0.1
        state[name + ".running_var"] = torch.rand(c) + 0.5

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for li, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            conv(p + ".conv1", planes, cin, 1)
            bn(p + ".bn1", planes)
            conv(p + ".conv2", planes, planes, 3)
            bn(p + ".bn2", planes)
            conv(p + ".conv3", planes * 4, planes, 1)
            bn(p + ".bn3", planes * 4)
            if b == 0:
                conv(p + ".downsample.0", planes * 4, cin, 1)
                bn(p + ".downsample.1", planes * 4)
            cin = planes * 4
    state["fc.weight"] = torch.randn(1000, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


def test_torchvision_state_dict_loads_into_resnet50(tmp_path):
    state = _torchvision_resnet50_state()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, path)
    backbone = build_backbone("resnet50", pretrained=str(path))
    ours = backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key
    with pytest.raises(DataError, match="resnet50.*resnet101"):
        build_backbone("resnet101", pretrained=str(path))


# ------------------------------------------- the AffinityNet release's ResNet-38 (res38_cls.pth / res38_aff.pth)

# name, in, mid, out, stride, first_dilation, dilation: the reference's resnet38d.Net.__init__
REF_RESBLOCKS = [("b2", 64, 128, 128, 2, 1, 1), ("b2_1", 128, 128, 128, 1, 1, 1), ("b2_2", 128, 128, 128, 1, 1, 1),
                 ("b3", 128, 256, 256, 2, 1, 1), ("b3_1", 256, 256, 256, 1, 1, 1), ("b3_2", 256, 256, 256, 1, 1, 1),
                 ("b4", 256, 512, 512, 2, 1, 1)]
REF_RESBLOCKS += [(f"b4_{i}", 512, 512, 512, 1, 1, 1) for i in range(1, 6)]
REF_RESBLOCKS += [("b5", 512, 512, 1024, 1, 1, 2),
                  ("b5_1", 1024, 512, 1024, 1, 2, 2), ("b5_2", 1024, 512, 1024, 1, 2, 2)]
# name, in, out, dilation
REF_BOTBLOCKS = [("b6", 1024, 2048, 4), ("b7", 2048, 4096, 4)]


def _reference_resnet38_state(num_classes=20):
    """Random weights under the reference's key names, scaled so activations stay finite."""
    g = torch.Generator().manual_seed(1)
    state = {}

    def conv(name, cout, cin, k):
        state[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(1.0 / (cin * k * k))

    def bn(name, c):
        state[name + ".weight"] = torch.rand(c, generator=g) * 0.5 + 0.5
        state[name + ".bias"] = torch.randn(c, generator=g) * 0.1
        state[name + ".running_mean"] = torch.randn(c, generator=g) * 0.1
        state[name + ".running_var"] = torch.rand(c, generator=g) + 0.5

    conv("conv1a", 64, 3, 3)
    for name, cin, mid, cout, stride, _, _ in REF_RESBLOCKS:
        bn(f"{name}.bn_branch2a", cin)
        conv(f"{name}.conv_branch2a", mid, cin, 3)
        bn(f"{name}.bn_branch2b1", mid)
        conv(f"{name}.conv_branch2b1", cout, mid, 3)
        if cin != cout or stride != 1:
            conv(f"{name}.conv_branch1", cout, cin, 1)
    for name, cin, cout, _ in REF_BOTBLOCKS:
        bn(f"{name}.bn_branch2a", cin)
        conv(f"{name}.conv_branch2a", cout // 4, cin, 1)
        bn(f"{name}.bn_branch2b1", cout // 4)
        conv(f"{name}.conv_branch2b1", cout // 2, cout // 4, 3)
        bn(f"{name}.bn_branch2b2", cout // 2)
        conv(f"{name}.conv_branch2b2", cout, cout // 2, 1)
        conv(f"{name}.conv_branch1", cout, cin, 1)
    bn("bn7", 4096)
    conv("fc8", num_classes, 4096, 1)
    return state


def _reference_forward(sd, x):
    """resnet38d.Net.forward_as_dict written out with F.conv2d / F.batch_norm (eval mode)."""

    def bn(t, n):
        return F.batch_norm(t, sd[n + ".running_mean"], sd[n + ".running_var"], sd[n + ".weight"], sd[n + ".bias"],
                            training=False, eps=1e-5)

    def resblock(t, name, cin, cout, stride, first_dil, dil):
        b2 = F.relu(bn(t, name + ".bn_branch2a"))
        x_bn_relu = b2
        branch1 = F.conv2d(b2, sd[name + ".conv_branch1.weight"], stride=stride) if (cin != cout or stride != 1) else t
        b2 = F.conv2d(b2, sd[name + ".conv_branch2a.weight"], stride=stride, padding=first_dil, dilation=first_dil)
        b2 = F.relu(bn(b2, name + ".bn_branch2b1"))
        b2 = F.conv2d(b2, sd[name + ".conv_branch2b1.weight"], padding=dil, dilation=dil)
        return branch1 + b2, x_bn_relu

    def botblock(t, name, dil):
        b2 = F.relu(bn(t, name + ".bn_branch2a"))
        x_bn_relu = b2
        branch1 = F.conv2d(b2, sd[name + ".conv_branch1.weight"])
        b2 = F.conv2d(b2, sd[name + ".conv_branch2a.weight"])
        b2 = F.relu(bn(b2, name + ".bn_branch2b1"))
        b2 = F.conv2d(b2, sd[name + ".conv_branch2b1.weight"], padding=dil, dilation=dil)
        b2 = F.relu(bn(b2, name + ".bn_branch2b2"))
        b2 = F.conv2d(b2, sd[name + ".conv_branch2b2.weight"])
        return branch1 + b2, x_bn_relu

    t = F.conv2d(x, sd["conv1a.weight"], padding=1)
    taps = {}
    for name, cin, _, cout, stride, first_dil, dil in REF_RESBLOCKS:
        t, x_bn_relu = resblock(t, name, cin, cout, stride, first_dil, dil)
        taps[name] = x_bn_relu
    for name, _, _, dil in REF_BOTBLOCKS:
        t, x_bn_relu = botblock(t, name, dil)
        taps[name] = x_bn_relu
    conv6 = F.relu(bn(t, "bn7"))
    return taps["b5"], taps["b6"], conv6


@pytest.fixture(scope="module")
def reference_state():
    return _reference_resnet38_state()


def test_reference_res38_cls_checkpoint_gives_reference_outputs(reference_state, resnet38, tmp_path):
    path = tmp_path / "res38_cls.pth"
    torch.save({"module." + k: v for k, v in reference_state.items()}, path)  # saved from DataParallel
    model = Classifier(resnet38, 20)
    load_checkpoint_into(model, path)
    model.eval()
    sd = reference_state
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        _, _, conv6 = _reference_forward(sd, x)
        ref_cam = F.relu(F.conv2d(conv6, sd["fc8.weight"]))
        ref_logits = F.conv2d(F.avg_pool2d(conv6, conv6.shape[-2:]), sd["fc8.weight"]).flatten(1)
        assert conv6.abs().max() > 1e-3 and torch.isfinite(conv6).all()
        cam, logits = model.cam(x), model(x)
    assert cam.shape == (1, 20, 3, 3)
    assert torch.allclose(cam, ref_cam, rtol=1e-4, atol=1e-5 * ref_cam.abs().max())
    assert torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-5 * ref_logits.abs().max())


def test_reference_res38_aff_state_gives_reference_embedding(reference_state, resnet38):
    g = torch.Generator().manual_seed(2)
    state = {k: v for k, v in reference_state.items() if not k.startswith("fc8.")}
    for name, cout, cin in [("f8_3", 64, 512), ("f8_4", 128, 1024), ("f8_5", 256, 4096), ("f9", 448, 448)]:
        state[name + ".weight"] = torch.randn(cout, cin, 1, 1, generator=g) * math.sqrt(1.0 / cin)
    mapped = reference_to_ours(state, kind="aff")
    assert "backbone.b4_5.conv_branch2b1.weight" in mapped and "f9.weight" in mapped and "conv1a.weight" not in mapped
    model = AffinityNet(resnet38)
    load_reference_checkpoint(model, state)
    model.eval()
    sd = state
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        conv4, conv5, conv6 = _reference_forward(sd, x)
        f = torch.cat([F.elu(F.conv2d(conv4, sd["f8_3.weight"])), F.elu(F.conv2d(conv5, sd["f8_4.weight"])),
                       F.elu(F.conv2d(conv6, sd["f8_5.weight"]))], dim=1)
        ref = F.elu(F.conv2d(f, sd["f9.weight"]))
        out = model(x)
    assert out.shape == (1, 448, 3, 3)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max())


def test_reference_checkpoint_as_backbone_weights_ignores_heads(reference_state, tmp_path):
    path = tmp_path / "res38_cls.pth"
    torch.save(reference_state, path)
    backbone = build_backbone("resnet38", pretrained=str(path))
    assert torch.equal(backbone.b6.conv_branch2b2.weight, reference_state["b6.conv_branch2b2.weight"])
    assert torch.equal(backbone.bn7.running_var, reference_state["bn7.running_var"])


def test_deeplab_head_rate_sets_the_dilations():
    from affinitynet.models import DeepLab, build_backbone

    fov = DeepLab(build_backbone("tiny"), 4, head="largefov", rate=2)
    assert fov.head[0].dilation == (2, 2) and fov.head[0].padding == (2, 2)
    aspp = DeepLab(build_backbone("tiny"), 4, head="aspp", rate=12)
    assert [b.dilation[0] for b in aspp.head.branches] == [6, 12, 18, 24]
    x = torch.randn(1, 3, 40, 40)
    assert fov(x).shape == aspp(x).shape == (1, 4, 5, 5)


def test_head_dropout_out_of_range_is_a_config_problem():
    from affinitynet.config import Config
    from affinitynet.validate import config_problems

    cfg = Config()
    cfg.segmentation.head_dropout = 1.0
    assert "segmentation.head_dropout" in dict(config_problems(cfg, files=False))
    cfg.segmentation.head_dropout = 0.0
    assert "segmentation.head_dropout" not in dict(config_problems(cfg, files=False))
