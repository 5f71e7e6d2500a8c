"""Pair offsets, pair indices (full and reference sets), pair labels, pair affinity, loss and AP."""
import math

import pytest
import torch

from affinitynet.ops.affinity import affinity_average_precision, affinity_loss, pair_affinity
from affinitynet.ops.pairs import pair_indices, pair_labels, pair_offsets


def reference_get_indices_of_pairs(radius, size):
    """Plain-python transcription of the original AffinityNet tool/pyutils.py get_indices_of_pairs."""
    h, w = size
    search_dst = [(0, x) for x in range(1, radius)]
    search_dst += [
        (y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius * radius
    ]
    radius_floor = radius - 1
    full = [[y * w + x for x in range(w)] for y in range(h)]
    cropped_height = h - radius_floor
    cropped_width = w - 2 * radius_floor
    indices_from = [full[y][x] for y in range(cropped_height) for x in range(radius_floor, w - radius_floor)]
    froms, tos = [], []
    for dy, dx in search_dst:
        indices_to = [
            full[y][x]
            for y in range(dy, dy + cropped_height)
            for x in range(radius_floor + dx, radius_floor + dx + cropped_width)
        ]
        froms += indices_from
        tos += indices_to
    return froms, tos


def brute_force_pairs(h, w, radius):
    """Every unordered pixel pair at squared distance below radius^2, by a double loop."""
    pairs = set()
    for i in range(h * w):
        for j in range(h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            if i < j and (yi - yj) ** 2 + (xi - xj) ** 2 < radius * radius:
                pairs.add((i, j))
    return pairs


def test_pair_offsets_radius5_count_and_half_plane():
    offsets = pair_offsets(5)
    assert len(offsets) == 34
    assert len(set(offsets)) == 34
    for dy, dx in offsets:
        assert dy > 0 or (dy == 0 and dx > 0)
        assert dy * dy + dx * dx < 25
        assert (-dy, -dx) not in offsets
    assert pair_offsets(1) == []
    assert sorted(pair_offsets(2)) == [(0, 1), (1, -1), (1, 0), (1, 1)]


@pytest.mark.parametrize("h,w", [(1, 1), (1, 6), (4, 4), (7, 5), (13, 9)])
@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_full_pairs_equal_brute_force(h, w, radius):
    idx_from, idx_to = pair_indices(h, w, radius)
    got = list(zip(idx_from.tolist(), idx_to.tolist()))
    assert len(got) == len(set(got))
    assert {(min(p), max(p)) for p in got} == brute_force_pairs(h, w, radius)
    assert len({frozenset(p) for p in got}) == len(got)  # each unordered pair once


@pytest.mark.parametrize("h,w", [(5, 9), (7, 5), (13, 9), (9, 13), (20, 17)])
@pytest.mark.parametrize("radius", [1, 2, 3, 4, 5])
def test_reference_pairs_equal_original_code(h, w, radius):
    idx_from, idx_to = pair_indices(h, w, radius, reference=True)
    froms, tos = reference_get_indices_of_pairs(radius, (h, w))
    assert idx_from.tolist() == froms
    assert idx_to.tolist() == tos
    full = set(zip(*[t.tolist() for t in pair_indices(h, w, radius)]))
    assert set(zip(froms, tos)) <= full  # the reference set is a trimmed subset of ours


def test_pair_indices_cached_and_device():
    a = pair_indices(6, 7, 3)
    b = pair_indices(6, 7, 3)
    assert a[0] is b[0] and a[1] is b[1]
    c = pair_indices(6, 7, 3, device="cpu")
    assert torch.equal(c[0], a[0]) and c[0].dtype == torch.long


def test_pair_labels_equal_brute_force_with_ignore():
    labels = torch.tensor(
        [
            [0, 0, 1, 1, 255],
            [0, 255, 1, 2, 2],
            [0, 0, 255, 2, 0],
            [3, 3, 0, 255, 0],
        ]
    )
    h, w = labels.shape
    idx_from, idx_to = pair_indices(h, w, 3)
    bg_pos, fg_pos, neg = pair_labels(labels, idx_from, idx_to)
    flat = labels.flatten().tolist()
    expected = {}
    for i in range(h * w):
        for j in range(h * w):
            a, b = flat[i], flat[j]
            valid = a != 255 and b != 255
            expected[(i, j)] = (valid and a == b == 0, valid and a == b != 0, valid and a != b)
    for p, (i, j) in enumerate(zip(idx_from.tolist(), idx_to.tolist())):
        assert (bool(bg_pos[p]), bool(fg_pos[p]), bool(neg[p])) == expected[(i, j)]
    assert int(bg_pos.sum()) > 0 and int(fg_pos.sum()) > 0 and int(neg.sum()) > 0
    assert not bool((bg_pos & neg).any() or (fg_pos & neg).any() or (bg_pos & fg_pos).any())

    batch = torch.stack([labels, labels.flip(1)])
    b_bg, b_fg, b_neg = pair_labels(batch, idx_from, idx_to)
    assert b_bg.shape == (2, idx_from.numel())
    for b in range(2):
        one = pair_labels(batch[b], idx_from, idx_to)
        assert torch.equal(b_bg[b], one[0]) and torch.equal(b_fg[b], one[1]) and torch.equal(b_neg[b], one[2])


def test_pair_affinity_equals_loop():
    torch.manual_seed(0)
    feat = torch.randn(2, 6, 4, 5)
    idx_from, idx_to = pair_indices(4, 5, 3)
    aff = pair_affinity(feat, idx_from, idx_to)
    assert aff.shape == (2, idx_from.numel())
    flat = feat.flatten(2)
    for b in range(2):
        for p, (i, j) in enumerate(zip(idx_from.tolist(), idx_to.tolist())):
            expected = math.exp(-sum(abs(flat[b, k, i] - flat[b, k, j]).item() for k in range(6)) / 6)
            assert aff[b, p].item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(pair_affinity(feat[1], idx_from, idx_to), aff[1])


def test_pair_affinity_chunks_agree(monkeypatch):
    import affinitynet.ops.affinity as affinity_module

    torch.manual_seed(1)
    feat = torch.randn(2, 5, 6, 7, requires_grad=True)
    idx_from, idx_to = pair_indices(6, 7, 4)
    whole = pair_affinity(feat, idx_from, idx_to)
    monkeypatch.setattr(affinity_module, "_GATHER_ELEMENTS", 37)  # forces many small chunks
    chunked = pair_affinity(feat, idx_from, idx_to)
    assert torch.allclose(whole, chunked)
    chunked.sum().backward()
    assert feat.grad is not None and torch.isfinite(feat.grad).all()


def test_affinity_loss_hand_computed():
    eps = 1e-5
    aff = torch.tensor([[0.9, 0.8, 0.3, 0.6], [0.5, 0.1, 0.7, 0.95]], requires_grad=True)
    bg = torch.tensor([[True, False, False, False], [True, False, False, False]])
    fg = torch.tensor([[False, True, False, False], [False, False, False, True]])
    neg = torch.tensor([[False, False, True, True], [False, True, True, False]])
    loss, parts = affinity_loss(aff, bg, fg, neg, eps=eps)
    bg_term = (-math.log(0.9 + eps) - math.log(0.5 + eps)) / 2
    fg_term = (-math.log(0.8 + eps) - math.log(0.95 + eps)) / 2
    neg_term = -sum(math.log(1 + eps - a) for a in (0.3, 0.6, 0.1, 0.7)) / 4
    assert loss.item() == pytest.approx(bg_term / 4 + fg_term / 4 + neg_term / 2, rel=1e-6)
    assert parts["bg_loss"] == pytest.approx(bg_term, rel=1e-6)
    assert parts["fg_loss"] == pytest.approx(fg_term, rel=1e-6)
    assert parts["neg_loss"] == pytest.approx(neg_term, rel=1e-6)
    assert (parts["bg_count"], parts["fg_count"], parts["neg_count"]) == (2, 2, 4)
    loss.backward()
    assert torch.isfinite(aff.grad).all()


def test_affinity_loss_empty_term_is_zero_not_nan():
    aff = torch.tensor([[0.9, 0.2]], requires_grad=True)
    none = torch.zeros(1, 2, dtype=torch.bool)
    neg = torch.tensor([[False, True]])
    loss, parts = affinity_loss(aff, none, none, neg)
    assert loss.item() == pytest.approx(-math.log(1 + 1e-5 - 0.2) / 2, rel=1e-6)
    assert parts["bg_loss"] == 0.0 and parts["fg_loss"] == 0.0 and parts["bg_count"] == 0
    loss.backward()
    assert torch.isfinite(aff.grad).all()
    loss_all_empty, _ = affinity_loss(aff, none, none, none)
    assert loss_all_empty.item() == 0.0 and loss_all_empty.requires_grad


def brute_force_average_precision(scores, positive):
    """AP = sum over distinct thresholds (descending) of (recall step) x precision at that threshold."""
    n_pos = sum(positive)
    ap, last_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        selected = [p for s, p in zip(scores, positive) if s >= t]
        recall = sum(selected) / n_pos
        ap += (recall - last_recall) * sum(selected) / len(selected)
        last_recall = recall
    return ap


def test_average_precision_equals_brute_force_with_ties():
    scores = [0.9, 0.8, 0.8, 0.7, 0.5, 0.5, 0.5, 0.3, 0.2, 0.2]
    positive = [1, 0, 1, 1, 0, 1, 0, 0, 1, 0]
    got = affinity_average_precision(torch.tensor(scores), torch.tensor(positive, dtype=torch.bool))
    assert got == pytest.approx(brute_force_average_precision(scores, positive), abs=1e-12)
    # hand check without ties: ranks 1 (pos), 2 (neg), 3 (pos): AP = 0.5 * 1 + 0.5 * 2/3
    assert affinity_average_precision(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([True, False, True])) == pytest.approx(
        0.5 + 1 / 3
    )
    torch.manual_seed(3)
    s = (torch.rand(2, 40) * 5).round() / 5  # many ties
    pos = torch.rand(2, 40) > 0.5
    expected = brute_force_average_precision(s.flatten().tolist(), pos.flatten().int().tolist())
    assert affinity_average_precision(s, pos) == pytest.approx(expected, abs=1e-12)
    assert affinity_average_precision(s, torch.zeros_like(pos)) == 0.0


@pytest.mark.parametrize("h,w,radius", [(16, 16, 5), (7, 5, 3), (13, 9, 5), (3, 20, 4), (1, 6, 2)])
def test_grid_pair_affinity_equals_gathered_pairs(h, w, radius):
    from affinitynet.ops.affinity import grid_pair_affinity, pair_affinity

    feat = torch.randn(2, 8, h, w, requires_grad=True)
    idx_from, idx_to = pair_indices(h, w, radius)
    a = pair_affinity(feat, idx_from, idx_to)
    b = grid_pair_affinity(feat, radius)
    torch.testing.assert_close(b, a)
    ga, = torch.autograd.grad(a.sum(), feat)
    gb, = torch.autograd.grad(b.sum(), feat)
    torch.testing.assert_close(gb, ga)


@pytest.mark.parametrize("h,w,radius", [(47, 63, 5), (7, 5, 3), (13, 9, 5), (1, 6, 2), (3, 4, 5)])
@pytest.mark.parametrize("reference", [False, True])
def test_slice_affinities_equal_the_gathered_pairs_bit_for_bit(h, w, radius, reference):
    from affinitynet.ops.affinity import pair_affinity, radius_pair_affinity

    torch.manual_seed(h * w + radius)
    feat = torch.randn(2, 448 if h == 47 else 8, h, w)
    want = pair_affinity(feat, *pair_indices(h, w, radius, reference=reference))
    got = radius_pair_affinity(feat, radius, reference=reference)
    assert got.shape == want.shape and torch.equal(got, want)  # the same mean over the same contiguous channels
    assert torch.equal(radius_pair_affinity(feat[1], radius, reference=reference), want[1])
    if h == 47:  # and the public walk keeps its results exactly
        from affinitynet.randomwalk import propagate, propagate_with_affinity

        cam = torch.rand(2, 3, h, w)
        for method in ("sparse", "auto"):
            before = propagate_with_affinity(cam, want, h, w, radius, logt=4, reference_pairs=reference, method=method)
            assert torch.equal(propagate(cam, feat, radius=radius, logt=4, reference_pairs=reference, method=method),
                               before)


def test_pair_ap_keeps_labelled_pairs_of_every_image():
    from affinitynet.ops.affinity import pair_ap

    t, f = True, False
    one = (torch.tensor([[0.9, 0.2, 0.8, 0.5]]), torch.tensor([[t, f, f, f]]), torch.tensor([[f, f, t, f]]),
           torch.tensor([[f, t, f, f]]))  # the last pair has no label and is left out
    two = (torch.tensor([0.7, 0.1]), torch.tensor([f, f]), torch.tensor([f, f]), torch.tensor([t, t]))
    got = pair_ap([one, two])
    # kept scores 0.9+, 0.2-, 0.8+, 0.7-, 0.1-: both positives rank above every negative
    assert got == {"ap": 100.0, "positive_pairs": 2, "negative_pairs": 3}
    three = (torch.tensor([0.95]), torch.tensor([f]), torch.tensor([f]), torch.tensor([t]))
    # a negative above both positives: precision 1/2 at the first positive, 2/3 at the second
    assert pair_ap([one, two, three])["ap"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
