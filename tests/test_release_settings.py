"""The settings that make ``voc12_resnet38`` behave as the AffinityNet release: each one pinned by what it does.

docs/reproducing.md traces every value to the release's file and line; these tests check the behaviour
behind each row (optimiser step, pair set, padding, resampling, grid reduction, CRF unary, reporting).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from affinitynet import config
from affinitynet.config import resolve_config_path
from affinitynet.conventions import IMAGENET_MEAN, IMAGENET_STD
from affinitynet.data.transforms import TrainTransform, random_resize_long, shift_hue
from affinitynet.engine import PolyLR, param_groups_sgd
from affinitynet.ops.affinity import affinity_loss, pair_affinity
from affinitynet.conventions import normalize_image
from affinitynet.ops.cam import multiscale_cam, scaled_images
from affinitynet.ops.confident import grid_labels_from_scores, labels_from_scores
from affinitynet.ops.pairs import pair_indices, pair_labels, reference_subset
from affinitynet.stages.train_affinitynet import AffinityLoss

from test_crf import needs_crf


def preset(name):
    return config.load(resolve_config_path(name))


# ----------------------------------------------------------------------------- 1. optimiser


def test_release_preset_values():
    cfg = preset("voc12_resnet38")
    assert (cfg.cam.lr, cfg.cam.batch_size, cfg.cam.epochs, cfg.cam.crop_size) == (0.1, 16, 15, 448)
    assert (cfg.affinitynet.lr, cfg.affinitynet.batch_size, cfg.affinitynet.epochs, cfg.affinitynet.crop_size) == \
        (0.1, 8, 8, 448)
    for section in (cfg.cam, cfg.affinitynet):
        assert section.momentum == section.weight_decay == 5e-4 and section.poly_power == 0.9
        assert section.resample == "bicubic" and section.hue == 0.1 and section.color_jitter == 0.3
    assert cfg.cam.resize_long == [256, 512] and cfg.cam.crop_pad == "mean"
    assert cfg.affinitynet.resize_long == [] and cfg.affinitynet.crop_pad == "black"
    assert cfg.affinitynet.reference_pairs and cfg.random_walk.reference_pairs
    assert (cfg.affinity_labels.crf_unary, cfg.affinity_labels.grid_labels) == ("clipped", "scores")
    assert (cfg.affinity_labels.alpha_low, cfg.random_walk.alpha, cfg.affinity_labels.alpha_high) == (4, 16, 32)
    assert (cfg.random_walk.beta, cfg.random_walk.logt, cfg.random_walk.radius) == (8, 8, 5)
    assert cfg.eval.cam_bg_threshold == 0.2 and cfg.eval.score_split == "train"


def test_resnet50_preset_loads_with_irn_cam_settings():
    cfg = preset("voc12_resnet50")
    assert (cfg.cam.backbone, cfg.cam.output_stride, cfg.cam.crop_size, cfg.cam.resize_long) == \
        ("resnet50", 16, 512, [320, 640])
    assert (cfg.cam.lr, cfg.cam.weight_decay, cfg.cam.momentum, cfg.cam.epochs) == (0.1, 1e-4, 1e-4, 5)
    assert cfg.eval.cam_bg_threshold == 0.15


def test_sgd_with_momentum_5e4_steps_like_the_hand_formula():
    """Two steps of the release's optimiser (momentum 5e-4, decay on weights only), computed by hand."""
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    opt = param_groups_sgd(([w], [b], [], []), lr=0.1, weight_decay=5e-4, momentum=5e-4)
    sched = PolyLR(opt, max_step=4, power=0.9)
    x = torch.tensor([3.0, 1.0])
    expect_w, expect_b = w.detach().clone(), b.detach().clone()
    buf_w = buf_b = None
    for step in range(2):
        opt.zero_grad()
        ((w[0] * x).sum() + b[0]).backward()
        f = (1 - step / 4) ** 0.9
        d_w, d_b = x.unsqueeze(0) + 5e-4 * expect_w, torch.ones(1)
        buf_w = d_w if buf_w is None else 5e-4 * buf_w + d_w
        buf_b = d_b if buf_b is None else 5e-4 * buf_b + d_b
        expect_w, expect_b = expect_w - 0.1 * f * buf_w, expect_b - 0.2 * f * buf_b
        opt.step()
        sched.step()
    assert torch.allclose(w.detach(), expect_w, atol=1e-7) and torch.allclose(b.detach(), expect_b, atol=1e-7)


# ----------------------------------------------------------------------------- 2. pair set in training


@pytest.mark.parametrize("h,w,r", [(8, 10, 3), (12, 12, 5), (7, 16, 4)])
def test_reference_subset_picks_the_reference_pairs(h, w, r):
    full_from, full_to = pair_indices(h, w, r)
    ref_from, ref_to = pair_indices(h, w, r, reference=True)
    pos = reference_subset(h, w, r)
    assert torch.equal(full_from[pos], ref_from) and torch.equal(full_to[pos], ref_to)


def test_reference_pair_count_by_hand():
    # 8 x 10 grid, radius 3: "from" cells (8 - 2) x (10 - 4) = 36, offsets (0,1), (0,2) and 5 + 5 in rows 1, 2
    assert pair_indices(8, 10, 3, reference=True)[0].numel() == 36 * 12


class _FixedEmbedding(torch.nn.Module):
    def __init__(self, feat):
        super().__init__()
        self.feat = torch.nn.Parameter(feat)

    def forward(self, x):
        return self.feat.expand(x.shape[0], -1, -1, -1)


def test_training_loss_on_reference_pairs_equals_the_gathered_reference_set():
    torch.manual_seed(0)
    feat = torch.randn(1, 6, 8, 10)
    grid = torch.randint(0, 3, (1, 8, 10))
    grid[0, :2, :3] = 255
    model = _FixedEmbedding(feat)
    loss, _ = AffinityLoss(radius=3, reference_pairs=True)(model, (torch.zeros(1, 3, 64, 80), grid), "cpu")
    idx_from, idx_to = pair_indices(8, 10, 3, reference=True)
    expected, _ = affinity_loss(pair_affinity(feat, idx_from, idx_to), *pair_labels(grid, idx_from, idx_to))
    assert torch.allclose(loss, expected, atol=1e-6)
    full, _ = AffinityLoss(radius=3)(model, (torch.zeros(1, 3, 64, 80), grid), "cpu")
    assert not torch.allclose(full, expected)  # the two pair sets really differ here


# ----------------------------------------------------------------------------- 3. augmentation


class _Section:
    def __init__(self, **kw):
        self.__dict__.update(dict(crop_size=16, resize_long=[], color_jitter=0.0, hue=0.0, resample="bilinear",
                                  crop_pad="mean"), **kw)


@pytest.mark.parametrize("pad", ["mean", "black"])
def test_crop_padding_mean_or_black(pad):
    img = np.full((6, 8, 3), 200, np.uint8)
    x, y = TrainTransform("aff", _Section(crop_pad=pad))(img, np.zeros((6, 8), np.uint8), np.random.default_rng(0))
    outside = (y == 255)
    assert outside.sum() == 16 * 16 - 6 * 8
    expected = torch.zeros(3) if pad == "mean" else -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    values = x.permute(1, 2, 0)[outside]
    assert torch.allclose(values, expected.expand_as(values), atol=1e-6)
    inside = x.permute(1, 2, 0)[~outside]
    assert torch.allclose(inside, ((200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).expand_as(inside))


def test_score_labels_cropped_with_zeros_and_flipped_with_the_image():
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, :3] = 255  # left half white
    scores = np.zeros((4, 6, 2), np.float32)
    scores[:, :3, 0] = 1.0  # channel 0 on the white half
    for seed in range(6):
        x, y = TrainTransform("aff", _Section(crop_size=8, crop_pad="black"))(img, scores, np.random.default_rng(seed))
        assert y.shape == (2, 8, 8) and y.dtype == torch.float32
        white = x[0] > 1.0
        assert torch.equal(white, y[0] == 1.0)  # the label moved and mirrored with the pixels
        assert float(y.sum()) == 12.0  # nothing invented in the padding


def test_hue_shift_turns_red_to_green():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    green = shift_hue(red, 1 / 3)
    assert green[..., 1].min() >= 250 and green[..., [0, 2]].max() <= 6
    grey = np.full((2, 2, 3), 128, np.uint8)
    assert np.array_equal(shift_hue(grey, 0.3), grey)


def test_bicubic_resize_long_is_pils_bicubic():
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    out, _ = random_resize_long(img, None, [20, 20], np.random.default_rng(0), resample="bicubic")
    expected = np.asarray(Image.fromarray(img).resize((20, 15), Image.BICUBIC))
    assert np.array_equal(out, expected)


# ----------------------------------------------------------------------------- 4. make_cam rescaling


def test_bicubic_scales_resize_the_uint8_image_before_normalising():
    img = np.random.default_rng(1).integers(0, 255, (75, 101, 3), dtype=np.uint8)
    views = scaled_images(img, (1.0, 0.5, 1.5), IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert torch.equal(views[0], normalize_image(img, IMAGENET_MEAN, IMAGENET_STD))
    assert views[1].shape == (3, 38, 50)  # round(37.5) = 38, round(50.5) = 50 (Python rounds half to even)
    half = np.array(Image.fromarray(img).resize((50, 38), Image.BICUBIC))
    assert torch.equal(views[1], normalize_image(half, IMAGENET_MEAN, IMAGENET_STD))
    bilinear = scaled_images(img, (0.5,), IMAGENET_MEAN, IMAGENET_STD, "bilinear")[0]
    assert (bilinear - views[1]).abs().max() > 0.05  # a real difference, not rounding


class _ChannelCam(torch.nn.Module):
    """cam(x) = ReLU of the first input channel, average-pooled by 2: a network anyone can compute by hand."""

    def cam(self, x):
        return F.relu(F.avg_pool2d(x[:, :1], 2))


def test_multiscale_cam_uses_the_given_scaled_views():
    img = np.random.default_rng(2).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    scales = (1.0, 0.5, 1.5)
    views = scaled_images(img, scales, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    base = normalize_image(img, IMAGENET_MEAN, IMAGENET_STD)
    got = multiscale_cam(_ChannelCam(), base, scales, flip=True, scaled=views)
    expected = torch.zeros(1, 20, 28)
    for v in views:
        for flipped in (False, True):
            x = v.flip(-1) if flipped else v
            m = F.relu(F.avg_pool2d(x[None, :1], 2))
            m = m.flip(-1) if flipped else m
            expected += F.interpolate(m, size=(20, 28), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(got, expected, atol=1e-5)


# ----------------------------------------------------------------------------- 5. affinity labels on the grid


def test_grid_labels_average_scores_before_the_argmax():
    """One 8x8 cell: 40 pixels lean foreground (0.4 / 0.6), 24 are surely background (1.0 / 0.0).

    Voting per pixel would say foreground (40 of 64); the averaged scores say background
    (0.625 vs 0.375) in the low-alpha stack, so the cell is not confident foreground: 255.
    """
    la = torch.zeros(2, 8, 16)
    la[0], la[1] = 0.4, 0.6
    flat0, flat1 = la[0, :, :8].reshape(-1), la[1, :, :8].reshape(-1)
    flat0[40:], flat1[40:] = 1.0, 0.0
    la[0, :, :8], la[1, :, :8] = flat0.reshape(8, 8), flat1.reshape(8, 8)
    ha = la.clone()
    ha[0] = 0.0  # high alpha: background never wins
    ha[1] = 1.0
    out = grid_labels_from_scores(torch.cat([la, ha]), stride=8)
    assert out.tolist() == [[255, 1]]
    per_pixel = labels_from_scores(la, ha)
    assert int((per_pixel[:, :8] == 1).sum()) == 40  # the vote the release does not take


def test_grid_labels_padding_has_no_score_and_high_alpha_background_wins():
    la = torch.zeros(2, 16, 16)
    la[1, :, :8] = 1.0  # left cells: foreground at low alpha
    ha = torch.zeros(2, 16, 16)
    ha[1, :8, :8] = 1.0
    ha[0, 8:, :8] = 1.0  # bottom-left: background confident at high alpha -> 0 overrides
    out = grid_labels_from_scores(torch.cat([la, ha]), stride=8)
    assert out.tolist() == [[1, 255], [0, 255]]  # right column: all-zero scores (crop padding) -> 255


# ----------------------------------------------------------------------------- 6. CRF unary


@needs_crf
def test_clipped_unary_is_minus_log_of_the_raw_scores():
    import pydensecrf.densecrf as dcrf

    from affinitynet.ops.crf import dense_crf

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)
    probs = (rng.random((3, 12, 14)) * 0.3).astype(np.float32)
    # raw 1e-3 vs 1e-6 (clipped to 1e-5): a 100x ratio; normalised first, 1e-6 becomes 1e-3 and survives the clip
    probs[0, :4, :4], probs[1:, :4, :4] = 1e-3, 1e-6
    d = dcrf.DenseCRF2D(14, 12, 3)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(3, -1)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
    expected = np.asarray(d.inference(10), np.float32).reshape(3, 12, 14)
    got = dense_crf(image, probs, unary="clipped")
    assert np.allclose(got, expected, atol=1e-6)
    assert np.abs(dense_crf(image, probs, unary="normalized") - got).max() > 1e-3


def test_choice_keys_reject_unknown_words():
    with pytest.raises(config.ConfigError, match="expected one of normalized, clipped"):
        config.apply_overrides(config.Config(), ["affinity_labels.crf_unary=raw"])
    with pytest.raises(config.ConfigError, match="expected one of mean, black"):
        config.apply_overrides(config.Config(), ["affinitynet.crop_pad=white"])
