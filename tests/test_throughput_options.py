"""Throughput options (runtime.amp, channels_last, pin_memory, prefetch_factor, step_sync, batch_images):
each one changes nothing it must not change, as far as a CPU can show it."""
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from affinitynet import config as config_mod
from affinitynet import engine
from affinitynet.accel import AccelOptions, Autocast, SameSizeBatches
from affinitynet.data.transforms import ClassificationSet, TrainTransform
from affinitynet.engine import fit, load_checkpoint, param_groups_sgd
from affinitynet.errors import ConfigError, StageError
from affinitynet.models import build_classifier
from affinitynet.ops.cam import multiscale_cam


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is 20x faster than two spinning ones on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    """Conv + BN backbone and a new head: enough to exercise autocast, channels-last and BN buffers."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3))

    def param_groups(self):
        return [self.conv.weight, self.bn.weight], [self.conv.bias, self.bn.bias], [self.head.weight], [self.head.bias]


class Images:
    """The data-layer interface ClassificationSet reads: names, load_image, load_labels."""

    def __init__(self, n=16, classes=3):
        self.names = [f"img{i:02d}" for i in range(n)]
        self.classes = classes

    def load_image(self, name):
        return np.random.default_rng(int(name[3:])).integers(0, 256, size=(18, 22, 3), dtype=np.uint8)

    def load_labels(self, name):
        labels = np.zeros(self.classes, np.float32)
        labels[int(name[3:]) % self.classes] = 1
        return labels


class Section:
    crop_size = 16
    resize_long = [16, 24]
    color_jitter = 0.3


def loss_fn(model, batch, device):
    x, y = (t.to(device, non_blocking=True) for t in batch)
    logits = model(x)
    loss = nn.functional.multilabel_soft_margin_loss(logits, y)
    return loss, {"acc": ((logits > 0).float() == y).float().mean().detach()}


def train(tmp_path, accel=None, loss=loss_fn, epochs=2, **kw):
    """Two epochs of 4 steps; returns (model, history rows, summary)."""
    torch.manual_seed(0)
    model = Net()
    opt = param_groups_sgd(model.param_groups(), lr=0.05, weight_decay=1e-3, momentum=0.9)
    data = ClassificationSet(Images(), TrainTransform("cls", Section()), seed=7)
    args = dict(optimizer=opt, epochs=epochs, batch_size=4, ckpt_dir=tmp_path, device="cpu", seed=3, log_every=2,
                log=logging.getLogger("test"), accel=accel)
    args.update(kw)
    summary = fit(model, loss, data, **args)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    return model, rows, summary


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def close_weights(a: nn.Module, b: nn.Module, atol: float) -> bool:
    return all(torch.allclose(x.float(), y.float(), atol=atol) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


# ----------------------------------------------------------------------------- defaults and config


def test_defaults_leave_the_network_and_loader_as_they_were():
    opts = AccelOptions()
    model = Net()
    assert opts.wrap(model, "cpu") is model and opts.for_inference(model, "cpu") is model
    assert opts.autocast_dtype("cpu") is None and not opts.grad_scaler("cpu").is_enabled()
    assert opts.loader_kwargs("cpu", 0) == {"num_workers": 0, "pin_memory": False}


def test_loader_pins_memory_on_cuda_only_and_prefetches_with_workers():
    assert AccelOptions().loader_kwargs("cuda", 4) == {"num_workers": 4, "pin_memory": True, "prefetch_factor": 2}
    assert AccelOptions(pin_memory=False, prefetch_factor=6).loader_kwargs("cuda:0", 2) == \
        {"num_workers": 2, "pin_memory": False, "prefetch_factor": 6}
    assert AccelOptions().loader_kwargs("cpu", 2)["pin_memory"] is False


def test_amp_picks_float16_with_loss_scaling_on_cuda_and_bfloat16_elsewhere():
    opts = AccelOptions(amp=True)
    assert opts.autocast_dtype("cuda") == torch.float16 and opts.autocast_dtype("cpu") == torch.bfloat16
    assert not opts.grad_scaler("cpu").is_enabled()  # bfloat16 has float32's exponent range


def _stage_specs():
    try:
        from affinitynet.stages import STAGES
    except ImportError:  # before the stage list moved into the stages package
        from affinitynet.pipeline import STAGES
    return STAGES


def test_runtime_keys_reach_the_options_and_never_invalidate_stages():
    STAGES = _stage_specs()
    cfg = config_mod.Config()
    before = {s.name: config_mod.subset_hash(cfg, s.sections, s.exclude) for s in STAGES}
    config_mod.apply_overrides(cfg, ["runtime.amp=true", "runtime.channels_last=true", "runtime.pin_memory=false",
                                     "runtime.prefetch_factor=4", "runtime.step_sync=false", "runtime.batch_images=8"])
    assert {s.name: config_mod.subset_hash(cfg, s.sections, s.exclude) for s in STAGES} == before
    assert AccelOptions.from_runtime(cfg.runtime) == AccelOptions(True, True, False, 4, False, 8)
    with pytest.raises(ConfigError, match="runtime.batch_images must be at least 1"):
        AccelOptions(batch_images=0)


# ----------------------------------------------------------------------------- training loop


def test_step_sync_off_gives_the_same_weights_and_history(tmp_path):
    synced, rows_a, sum_a = train(tmp_path / "a", AccelOptions(step_sync=True))
    free, rows_b, sum_b = train(tmp_path / "b", AccelOptions(step_sync=False))
    assert same_weights(synced, free)
    assert strip_time(rows_a) == strip_time(rows_b) and sum_a["final_loss"] == sum_b["final_loss"]


def test_step_sync_off_reads_losses_only_at_log_points(tmp_path, monkeypatch):
    reads = []
    read = engine.read_steps

    def counting(unread, *args):
        reads.append([u.step for u in unread])
        return read(unread, *args)

    monkeypatch.setattr(engine, "read_steps", counting)
    train(tmp_path / "a", AccelOptions(step_sync=False), log_every=3)
    assert reads == [[1, 2, 3], [4], [5, 6], [7, 8]]  # log_every=3 and each epoch's last step (4 steps an epoch)
    reads.clear()
    train(tmp_path / "b", AccelOptions(step_sync=True), log_every=3)
    assert reads == [[s] for s in range(1, 9)]


def test_training_losses_stay_on_the_device():
    """The stages' loss functions return tensors, never Python numbers read from the device."""
    from affinitynet.ops.affinity import affinity_loss
    from affinitynet.stages.train_cam import classification_loss
    from affinitynet.stages.train_segmentation import segmentation_loss

    model = nn.Conv2d(3, 4, 1)
    x, tags, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 4)).float(), torch.randint(0, 4, (2, 8, 8))
    for fn, batch in ((classification_loss, (x, tags)), (segmentation_loss, (x, labels))):
        loss, logs = fn(lambda t: model(t).mean(dim=(2, 3)) if fn is classification_loss else model(t), batch, "cpu")
        assert torch.is_tensor(loss) and all(torch.is_tensor(v) for v in logs.values())
    aff = torch.rand(2, 5)
    masks = [torch.rand(2, 5) > 0.5 for _ in range(3)]
    loss, parts = affinity_loss(aff, *masks)
    assert all(torch.is_tensor(v) for v in parts.values())


def test_nan_guard_without_step_sync_names_the_first_bad_step_and_keeps_the_checkpoint(tmp_path):
    def nan_from_step_6(model, batch, device, calls=[0]):
        calls[0] += 1
        loss, logs = loss_fn(model, batch, device)
        return (loss * float("nan") if calls[0] >= 6 else loss), logs

    with pytest.raises(StageError, match=r"loss became NaN at epoch 2 step 6; last good checkpoint kept at .*last.pt"):
        train(tmp_path, AccelOptions(step_sync=False), loss=nan_from_step_6, log_every=20)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_workers_with_prefetch_load_the_same_batches(tmp_path):
    plain, rows_a, _ = train(tmp_path / "a", AccelOptions(), num_workers=0)
    loaded, rows_b, _ = train(tmp_path / "b", AccelOptions(prefetch_factor=3, pin_memory=True), num_workers=2)
    assert same_weights(plain, loaded) and strip_time(rows_a) == strip_time(rows_b)


def test_channels_last_trains_to_the_same_weights_within_rounding(tmp_path):
    plain, rows_a, _ = train(tmp_path / "a")
    nhwc, rows_b, _ = train(tmp_path / "b", AccelOptions(channels_last=True))
    assert nhwc.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert close_weights(plain, nhwc, atol=1e-5)
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], rel=1e-5)


def test_amp_on_the_cpu_trains_in_bfloat16_close_to_float32(tmp_path):
    _, rows_a, _ = train(tmp_path / "a")
    _, rows_b, _ = train(tmp_path / "b", AccelOptions(amp=True))
    # bfloat16 keeps 8 bits of mantissa: the losses of a few steps agree to about 2%
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], rel=0.03)


class Interrupt(Exception):
    pass


def test_float16_with_loss_scaling_checkpoints_its_scale_and_resumes(tmp_path, monkeypatch):
    """CUDA's float16 + GradScaler path, run on the CPU: close to float32; the scale is checkpointed and restored."""
    monkeypatch.setattr(AccelOptions, "autocast_dtype", lambda self, device: torch.float16 if self.amp else None)
    opts = AccelOptions(amp=True)
    assert opts.grad_scaler("cpu").is_enabled()
    whole, rows, _ = train(tmp_path / "whole", opts)
    _, rows_fp32, _ = train(tmp_path / "fp32")
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in rows_fp32], rel=0.01)

    count = [0]

    def dying_loss(model, batch, device):
        count[0] += 1
        if count[0] == 6:
            raise Interrupt
        return loss_fn(model, batch, device)

    with pytest.raises(Interrupt):
        train(tmp_path / "cut", opts, loss=dying_loss)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["extra"]["scaler"]["scale"] > 0
    resumed, _, summary = train(tmp_path / "cut", opts)
    assert summary["resumed_from_epoch"] == 1 and close_weights(whole, resumed, atol=1e-6)


# ----------------------------------------------------------------------------- inference


def tiny_classifier():
    torch.manual_seed(0)
    model = build_classifier(SimpleNamespace(backbone="tiny", pretrained="", output_stride=8), 4).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_autocast_wrapper_returns_float32_and_is_the_network_otherwise():
    model = tiny_classifier()
    wrapped = AccelOptions(amp=True, channels_last=True).for_inference(model, "cpu")
    assert isinstance(wrapped, Autocast) and wrapped.backbone is model.backbone
    x = torch.randn(2, 3, 32, 40)
    assert wrapped(x).dtype == torch.float32 and wrapped.cam(x).dtype == torch.float32
    assert sum(1 for _ in wrapped.parameters()) == sum(1 for _ in model.parameters())


def test_channels_last_and_amp_cams_match_float32():
    image = torch.randn(3, 37, 45)
    ref = multiscale_cam(tiny_classifier(), image, (1.0, 0.5, 1.5), True)
    nhwc = multiscale_cam(AccelOptions(channels_last=True).for_inference(tiny_classifier(), "cpu"), image,
                          (1.0, 0.5, 1.5), True)
    assert nhwc.dtype == torch.float32 and torch.allclose(nhwc, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    amp = multiscale_cam(AccelOptions(amp=True).for_inference(tiny_classifier(), "cpu"), image, (1.0, 0.5, 1.5), True)
    assert amp.dtype == torch.float32
    assert (amp - ref).abs().max() <= 0.05 * ref.abs().max()  # bfloat16: ~3 significant digits per layer


def test_amp_and_channels_last_reach_the_boundary_map():
    """The wrapper runs IRN's boundary_map itself under autocast, channels-last: not the bare network's method."""
    from affinitynet.models import build_boundary

    section = config_mod.Config().boundary
    torch.manual_seed(0)
    net = build_boundary(section).eval()
    seen = []
    net.fuse.register_forward_hook(lambda m, args, out: seen.append(
        (torch.is_autocast_enabled("cpu"), args[0].is_contiguous(memory_format=torch.channels_last))))
    x = torch.randn(1, 3, 52, 64)
    ref = net.boundary_map(x, flip=True, min_size=72)
    assert seen.pop() == (False, False)
    for opts, tol in ((AccelOptions(channels_last=True), 1e-5), (AccelOptions(amp=True, channels_last=True), 0.02)):
        wrapped = opts.for_inference(net, "cpu")
        b = wrapped.boundary_map(x, flip=True, min_size=72)
        assert seen.pop() == (opts.amp, True)
        assert b.dtype == torch.float32 and b.shape == ref.shape
        assert (b - ref).abs().max() <= tol  # a map in [0, 1]; bfloat16 keeps ~3 significant digits a layer
        net = net.to(memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------- batched multi-image inference


@pytest.mark.parametrize("batched", [True, False])
def test_a_batch_of_images_gives_each_image_its_own_cams(batched):
    model = tiny_classifier()
    images = torch.randn(3, 3, 29, 35)
    together = multiscale_cam(model, images, (1.0, 0.5, 1.5), True, batched=batched)
    assert together.shape == (3, 4, 29, 35)
    for i in range(3):
        alone = multiscale_cam(model, images[i], (1.0, 0.5, 1.5), True, batched=batched)
        assert torch.allclose(together[i], alone, rtol=1e-5, atol=1e-5 * alone.abs().max().item())


def test_batched_image_cams_equal_one_image_at_a_time():
    cam_sources = pytest.importorskip("affinitynet.stages.cam_sources")
    batch_image_cams, image_cams = cam_sources.batch_image_cams, cam_sources.image_cams

    model = tiny_classifier()
    rng = np.random.default_rng(0)
    raws = [rng.integers(0, 256, (30, 44, 3), dtype=np.uint8) for _ in range(3)]
    tags = [np.array([1, 0, 1, 0], np.float32), np.array([0, 1, 0, 0], np.float32), np.array([1, 1, 1, 1], np.float32)]
    for resample in ("bilinear", "bicubic"):
        cfg = SimpleNamespace(scales=[1.0, 0.5, 1.5], flip=True, batch_scales=True, resample=resample, max_long_side=40)
        for (keys, maps), raw, tag in zip(batch_image_cams(model, raws, tags, cfg), raws, tags):
            keys1, maps1 = image_cams(model, raw, tag, cfg)
            assert torch.equal(keys, keys1) and maps.shape == (len(keys1), 30, 44)
            assert torch.allclose(maps, maps1, atol=1e-5)


def test_same_size_batches_group_upcoming_images_of_one_size():
    sizes = {"a": (4, 6), "b": (4, 6), "c": (5, 6), "d": (4, 6), "e": (5, 6), "f": (4, 6), "g": (4, 6), "h": (5, 6)}
    done = {"d"}  # already written (resumed stage): it never arrives
    groups = []

    def run(names, inputs):
        assert all(inp[0].shape[:2] == inputs[0][0].shape[:2] for inp in inputs)
        groups.append(names)

    work = SameSizeBatches(list(sizes), run, size=2, lookahead=3)
    with work:
        for name in sizes:  # what map_images does: every name whose output was missing, with its input, in order
            if name not in done:
                work(name, (np.zeros(sizes[name] + (3,)),))
                assert len(work.waiting) <= 3 + 1  # at most lookahead + 1 inputs held
    assert groups == [["a", "b"], ["c", "e"], ["f", "g"], ["h"]]  # the last one alone, when the loop ended
    assert work.waiting == []


def test_same_size_batches_drop_what_waits_after_an_error():
    groups = []
    work = SameSizeBatches(["a", "b", "c"], lambda names, inputs: groups.append(names), size=2)
    with pytest.raises(KeyError):
        with work:
            work("a", (np.zeros((4, 6, 3)),))
            raise KeyError("stopped")
    assert groups == [] and work.waiting == []


def test_make_cam_writes_the_same_files_with_batched_images(tmp_path):
    """The real stage through the CLI: runtime.batch_images=4 and 1 give identical CAM files, and so do inputs
    prepared ahead in 2 DataLoader workers (byte for byte); amp stays close."""
    pytest.importorskip("affinitynet.stages.cam_sources")
    from affinitynet.cli import main
    from affinitynet.models import Classifier, TinyNet

    torch.manual_seed(0)
    torch.save(Classifier(TinyNet(), 5).state_dict(), tmp_path / "given.pth")

    def make_cam(out, *sets):
        args = ["run", "synthetic_cpu", "--out", str(tmp_path / out), "--to", "make_cam"]
        for s in (f"data.root={tmp_path / 'synth'}", "data.synthetic.train=6", "data.synthetic.val=1",
                  "data.synthetic.size=48", "runtime.progress=false", "cam.overlays=0",
                  f"cam.checkpoint={tmp_path / 'given.pth'}", *sets):
            args += ["--set", s]
        assert main(args) == 0
        return {p.name: np.load(p) for p in sorted((tmp_path / out / "cam").glob("*.npz"))}

    one, four = make_cam("one"), make_cam("four", "runtime.batch_images=4")
    make_cam("prefetched", "runtime.num_workers=2", "runtime.batch_images=4")
    for folder in ("four", "prefetched"):  # byte for byte: the DataLoader workers prepare what this process did
        assert {p.name: p.read_bytes() for p in (tmp_path / folder / "cam").glob("*.npz")} == \
            {p.name: p.read_bytes() for p in (tmp_path / "one" / "cam").glob("*.npz")}
    amp = make_cam("amp", "runtime.amp=true", "runtime.channels_last=true")
    assert len(one) == 6 and one.keys() == four.keys() == amp.keys()
    for name in one:
        assert np.array_equal(one[name]["keys"], four[name]["keys"])
        assert np.array_equal(one[name]["cams"], four[name]["cams"])
        assert np.abs(one[name]["cams"].astype(np.float32) - amp[name]["cams"]).max() < 0.05  # maps in [0, 1]
