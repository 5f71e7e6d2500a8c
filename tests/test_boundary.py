"""IRN's class-boundary affinities: path cells and path-max affinities against brute force, relation labels against
hand-built cases, the walk on boundary affinities against a dense transition matrix, the boundary network."""
import itertools

import numpy as np
import pytest
import torch

from affinitynet import config
from affinitynet.conventions import IGNORE
from affinitynet.models import BACKBONES, build_boundary
from affinitynet.ops.pairs import pair_indices
from affinitynet.ops.paths import path_cells, path_indices, path_max_affinity
from affinitynet.ops.relations import cell_labels, combine_confident, relation_labels, threshold_argmax
from affinitynet.randomwalk import dense_propagate_reference, propagate_with_affinity
from affinitynet.stages.random_walk import grid_to_image, threshold_background, walk_grid
from affinitynet.validate import config_problems


def brute_path(y0, x0, y1, x1):
    """Grid cells of the box spanned by two cells whose distance to the line through them is below one cell."""
    dy, dx = y1 - y0, x1 - x0
    out = set()
    for y in range(min(y0, y1), max(y0, y1) + 1):
        for x in range(min(x0, x1), max(x0, x1) + 1):
            cross = dy * (x - x0) - dx * (y - y0)
            if cross * cross < dy * dy + dx * dx:
                out.add((y, x))
    return out


def brute_affinity(edge: np.ndarray, radius: int) -> dict:
    """{(i, j): 1 - max edge on the path} for every cell pair i < j closer than the radius."""
    h, w = edge.shape
    aff = {}
    for (y0, x0), (y1, x1) in itertools.combinations(itertools.product(range(h), range(w)), 2):
        if (y1 - y0) ** 2 + (x1 - x0) ** 2 < radius ** 2:
            aff[(y0 * w + x0, y1 * w + x1)] = 1.0 - max(edge[y, x] for y, x in brute_path(y0, x0, y1, x1))
    return aff


def test_path_cells_of_hand_drawn_offsets():
    assert set(path_cells(0, 1)) == {(0, 0), (0, 1)}
    assert set(path_cells(2, 0)) == {(0, 0), (1, 0), (2, 0)}
    assert set(path_cells(1, 1)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # (1, 3): the line y = x / 3 passes within one cell of all but (0, 3) and (1, 0)... both are 0.95 away: kept
    assert set(path_cells(1, 3)) == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)}
    assert set(path_cells(2, -2)) == {(0, 0), (0, -1), (1, 0), (1, -1), (1, -2), (2, -1), (2, -2)}
    assert path_cells(3, -1)[0] == (0, 0) and path_cells(3, -1)[-1] == (3, -1)
    with pytest.raises(ValueError):
        path_cells(0, 0)


@pytest.mark.parametrize("h, w, radius", [(5, 6, 3), (7, 4, 4), (3, 9, 5), (1, 5, 3)])
def test_path_indices_match_brute_force_paths(h, w, radius):
    paths, valid = path_indices(h, w, radius)
    idx_from, idx_to = pair_indices(h, w, radius)
    assert torch.equal(paths[:, 0], idx_from)
    assert torch.equal(paths[torch.arange(len(paths)), valid.sum(1) - 1], idx_to)
    for p, v, f, t in zip(paths, valid, idx_from.tolist(), idx_to.tolist()):
        expected = {y * w + x for y, x in brute_path(f // w, f % w, t // w, t % w)}
        assert set(p[v].tolist()) == expected


@pytest.mark.parametrize("h, w, radius", [(5, 6, 3), (6, 7, 5), (2, 8, 4)])
def test_path_max_affinity_matches_brute_force(h, w, radius):
    edge = torch.rand(2, h, w, generator=torch.Generator().manual_seed(h * w))
    aff = path_max_affinity(edge, radius)
    idx_from, idx_to = pair_indices(h, w, radius)
    assert aff.shape == (2, idx_from.numel())
    for b in range(2):
        expected = brute_affinity(edge[b].numpy(), radius)
        assert len(expected) == idx_from.numel()
        got = {(f, t): float(a) for f, t, a in zip(idx_from.tolist(), idx_to.tolist(), aff[b])}
        assert got.keys() == expected.keys()
        assert max(abs(got[k] - expected[k]) for k in got) < 1e-6
    assert torch.equal(path_max_affinity(edge.unsqueeze(1), radius), aff)  # (B, 1, h, w) accepted


def test_path_max_affinity_gradient_reaches_the_path_maxima_only():
    edge = torch.zeros(1, 3, 3)
    edge[0, 1, 1] = 0.9
    edge.requires_grad_(True)
    path_max_affinity(edge, 2).sum().backward()
    # pairs at offsets (0, 1), (1, 0), (1, 1), (1, -1) within radius 2; the centre is the max of every path through it
    assert edge.grad[0, 1, 1] < 0 and edge.grad.count_nonzero() > 1


def test_threshold_argmax_and_combination_by_hand():
    maps = np.array([[[0.9, 0.2, 0.04, 0.0]], [[0.1, 0.25, 0.0, 0.5]]], np.float32)  # (2, 1, 4)
    assert threshold_argmax(maps, 0.3).tolist() == [[1, 0, 0, 2]]
    assert threshold_argmax(maps, 0.05).tolist() == [[1, 2, 0, 2]]
    fg = np.array([[3, 0, 0, 5, 0]])
    bg = np.array([[3, 5, 0, 5, 0]])
    assert combine_confident(fg, bg).tolist() == [[3, IGNORE, 0, 5, 0]]


def test_relation_labels_without_crf_by_hand():
    image = np.zeros((2, 4, 3), np.uint8)
    maps = np.array([[[0.9, 0.2, 0.04, 0.0], [0.31, 0.29, 0.06, 0.01]],
                     [[0.1, 0.25, 0.0, 0.5], [0.0, 0.0, 0.02, 0.04]]], np.float32)
    label = relation_labels(image, np.array([4, 9]), maps, fg_threshold=0.3, bg_threshold=0.05, crf=False)
    assert label.dtype == np.uint8
    assert label.tolist() == [[4, IGNORE, 0, 9], [4, IGNORE, IGNORE, 0]]
    with pytest.raises(ValueError):
        relation_labels(image, np.array([4]), maps, crf=False)  # one id for two maps
    with pytest.raises(ValueError):
        relation_labels(image, np.array([4, 9]), maps, fg_threshold=0.05, bg_threshold=0.3, crf=False)


def test_relation_labels_with_crf_keep_a_clear_object():
    pytest.importorskip("pydensecrf")
    image = np.full((32, 32, 3), 30, np.uint8)
    image[8:24, 8:24] = 220
    maps = np.zeros((1, 32, 32), np.float32)
    maps[0, 8:24, 8:24] = 0.9
    maps[0, 8:24, 20:24] = 0.2  # between the thresholds: the CRF fills it from the bright square's colour
    label = relation_labels(image, np.array([3]), maps)
    assert (label[8:24, 8:24] == 3).all() and (label[:6] == 0).all() and (label[:, :6] == 0).all()
    assert set(np.unique(label)) <= {0, 3, IGNORE}


def test_cell_labels_take_each_cells_centre_pixel():
    label = torch.arange(64).reshape(8, 8)
    assert cell_labels(label, 4).tolist() == [[18, 22], [50, 54]]
    odd = cell_labels(torch.zeros(2, 6, 5, dtype=torch.long), 4)  # past the edge: ignored
    assert odd.shape == (2, 2, 2) and odd[:, 1, :].eq(IGNORE).all() and odd[:, 0, 1].eq(IGNORE).all()


@pytest.mark.parametrize("method", ["sparse", "stencil"])
def test_walk_with_boundary_affinities_equals_a_dense_transition_matrix(method):
    if method == "stencil":
        pytest.importorskip("numba")
    h, w, radius, beta, logt = 5, 6, 3, 10.0, 4
    gen = torch.Generator().manual_seed(3)
    edge = torch.rand(h, w, generator=gen, dtype=torch.float64) ** 3
    cams = torch.rand(3, h, w, generator=gen, dtype=torch.float64) * (1 - edge)
    aff = path_max_affinity(edge.unsqueeze(0), radius)
    got = propagate_with_affinity(cams.unsqueeze(0), aff, h, w, radius, beta=beta, logt=logt, method=method)[0]
    # dense reference from the brute-force affinities: A (1 on the diagonal), A^beta, columns normalised, T^(2^logt)
    n = h * w
    a = torch.eye(n, dtype=torch.float64)
    for (i, j), v in brute_affinity(edge.numpy(), radius).items():
        a[i, j] = a[j, i] = v
    trans = a**beta / (a**beta).sum(0, keepdim=True)
    expected = cams.reshape(3, n) @ torch.linalg.matrix_power(trans, 2**logt)
    assert torch.allclose(got.reshape(3, n), expected, rtol=1e-9, atol=1e-12)
    idx_from, idx_to = pair_indices(h, w, radius)
    assert torch.allclose(dense_propagate_reference(cams.reshape(3, n), aff[0], idx_from, idx_to, n, beta, logt),
                          expected, rtol=1e-9, atol=1e-12)


def test_threshold_background_is_irns_constant_against_the_scaled_cams():
    cfg = config.Config().random_walk
    g = walk_grid(10, 13, cfg, 4)  # a 3 x 4 grid, cropped back to 10 x 13
    out = torch.zeros(1, 3, *g.grid)
    out[0, 1] = torch.rand(*g.grid)
    out[0, 2] = torch.rand(*g.grid) * 2
    filled = threshold_background(g, out, 0.25)
    scores = grid_to_image(filled, g.size, g.scaled, g.stride)
    cams = grid_to_image(out[:, 1:], g.size, g.scaled, g.stride)
    expected = torch.cat([torch.full((1, 10, 13), 0.25), cams / cams.max()]).argmax(0)
    assert torch.equal(scores.argmax(0), expected)
    assert threshold_background(g, torch.zeros(1, 1, *g.grid), 0.25)[0, 0].eq(0.25).all()  # no class: background


@pytest.mark.parametrize("backbone, stride", [("tiny", 8), ("resnet50", 16)])
def test_boundary_network_shapes_frozen_backbone_and_flip_symmetry(backbone, stride):
    section = config.Config().boundary
    section.backbone, section.output_stride = backbone, stride
    section.dilated = backbone != "resnet50"
    torch.manual_seed(0)
    net = build_boundary(section)
    net.train()
    assert not net.backbone.training  # frozen: BatchNorm statistics stay
    x = torch.randn(2, 3, 52, 64)
    logits = net(x)
    assert logits.shape == (2, 1, 13, 16)
    logits.mean().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert net.fuse.weight.grad is not None and net.sides[0][0].weight.grad is not None
    groups = net.param_groups()
    assert len(groups[0]) == sum(1 for p in net.parameters() if p.requires_grad) and not any(groups[1:])
    net.eval()
    b = net.boundary_map(x[:1], flip=True, min_size=72)
    assert b.shape == (1, 1, 13, 16) and 0 <= b.min() and b.max() <= 1
    assert torch.allclose(net.boundary_map(x[:1].flip(-1), flip=True, min_size=72), b.flip(-1), atol=1e-6)


def test_backbones_without_stride_4_levels_are_refused():
    section = config.Config().boundary
    section.backbone, section.output_stride = "resnet38", 8
    assert "resnet38" in BACKBONES
    with pytest.raises(Exception, match="stride-4"):
        build_boundary(section)


def test_config_rules_of_the_boundary_source():
    cfg = config.Config()
    cfg.boundary.dilated = False  # only for ResNets
    cfg.ir_labels.bg_threshold = 0.5  # above fg_threshold
    cfg.random_walk.bg_threshold = 0
    found = dict(config_problems(cfg, files=False))
    assert {"boundary.dilated", "ir_labels.bg_threshold", "random_walk.bg_threshold"} <= set(found)
    with pytest.raises(Exception, match="random_walk.background"):
        config.apply_overrides(config.Config(), ["random_walk.background=sometimes"])


@pytest.mark.parametrize("preset", ["synthetic_cpu", "photos_cpu"])
def test_irn_cpu_preset_shares_the_classifier_and_cams_of_the_cpu_preset(preset):
    ours = config.load(config.resolve_config_path(f"{preset}_irn"))
    base = config.load(config.resolve_config_path(preset))
    for section in config.SECTIONS:  # everything but the affinity source and its walk is the base preset's
        if section not in ("ir_labels", "boundary", "random_walk"):
            assert ours.to_dict()[section] == base.to_dict()[section], section
    assert ours.random_walk.affinity == "boundary" and base.random_walk.affinity == "affinitynet"
    assert not config_problems(ours, files=False)


def test_irn_voc_preset_holds_irns_settings():
    cfg = config.load(config.resolve_config_path("voc12_irn_resnet50"))
    base = config.load(config.resolve_config_path("voc12_resnet50"))
    assert cfg.to_dict()["cam"] == base.to_dict()["cam"]  # IRN's CAM step, as voc12_resnet50 has it
    r, b, w = cfg.ir_labels, cfg.boundary, cfg.random_walk
    assert (r.fg_threshold, r.bg_threshold, r.crf, r.crf_gt_prob, r.crf_iters) == (0.30, 0.05, True, 0.7, 10)
    assert (r.crf_gauss_sxy, r.crf_gauss_compat, r.crf_bilateral_sxy, r.crf_bilateral_srgb,
            r.crf_bilateral_compat) == (3, 3, 50, 5, 10)
    assert (b.backbone, b.output_stride, b.dilated, b.radius, b.reference_pairs) == ("resnet50", 16, False, 10, True)
    assert (b.epochs, b.batch_size, b.lr, b.weight_decay, b.momentum, b.poly_power) == (3, 32, 0.1, 1e-4, 1e-4, 0.9)
    assert (b.crop_size, b.scale_range, b.resize_long, b.resample, b.color_jitter) == (512, [0.5, 1.5], [],
                                                                                       "bicubic", 0.0)
    assert b.test_flip and b.test_pad
    assert (w.affinity, w.background, w.bg_threshold, w.scale) == ("boundary", "threshold", 0.25, 1.0)
    assert (w.radius, w.beta, w.logt, w.reference_pairs) == (5, 10, 8, False)
    assert (cfg.eval.cam_bg_threshold, cfg.eval.score_split) == (0.15, "train")
    assert not config_problems(cfg, files=False)


def test_path_max_affinity_gradient_equals_the_elementwise_maximum_chain():
    edge = torch.rand(2, 6, 7, generator=torch.Generator().manual_seed(5), requires_grad=True)
    weights = torch.rand(2, pair_indices(6, 7, 4)[0].numel())
    (path_max_affinity(edge, 4) * weights).sum().backward()
    expected = torch.zeros_like(edge)
    paths, valid = path_indices(6, 7, 4)
    for b in range(2):
        flat = edge[b].detach().reshape(-1)
        values = torch.where(valid, flat[paths], torch.tensor(-1.0))
        top = paths[torch.arange(len(paths)), values.argmax(1)]
        expected[b].view(-1).index_add_(0, top, -weights[b])
    assert torch.allclose(edge.grad, expected)
    with torch.no_grad():
        assert torch.equal(path_max_affinity(edge, 4), path_max_affinity(edge.detach(), 4))
