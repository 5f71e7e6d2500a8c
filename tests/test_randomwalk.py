"""Random walk: sparse propagation equals the dense matrix power; transition guarantees; region confinement."""
import pytest
import torch

from affinitynet.ops.pairs import pair_indices
from affinitynet.randomwalk import (
    dense_propagate_reference,
    propagate,
    propagate_with_affinity,
    transition_weights,
)


def dense_transition(aff, idx_from, idx_to, n, beta):
    """T = A^beta D^-1 built entry by entry (float64), A = pair affinities both ways + identity."""
    a = torch.eye(n, dtype=torch.float64)
    for p, (i, j) in enumerate(zip(idx_from.tolist(), idx_to.tolist())):
        a[i, j] += float(aff[p])
        a[j, i] += float(aff[p])
    a = a**beta
    return a / a.sum(dim=0, keepdim=True)


@pytest.mark.parametrize("h,w", [(7, 5), (13, 9), (6, 6), (1, 9)])
@pytest.mark.parametrize("radius", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("reference_pairs", [False, True])
def test_propagation_equals_dense_matrix_power(h, w, radius, reference_pairs):
    torch.manual_seed(h * 100 + w * 10 + radius)
    n, k = h * w, 3
    idx_from, idx_to = pair_indices(h, w, radius, reference=reference_pairs)
    aff = torch.rand(2, idx_from.numel())
    cam = torch.rand(2, k, h, w)
    for beta in (1, 8):
        for logt in (0, 1, 2, 5, 8):
            got = propagate_with_affinity(
                cam, aff, h, w, radius, beta=beta, logt=logt, reference_pairs=reference_pairs
            )
            assert got.shape == cam.shape and got.dtype == cam.dtype
            got64 = propagate_with_affinity(
                cam.double(), aff.double(), h, w, radius, beta=beta, logt=logt, reference_pairs=reference_pairs
            )
            for b in range(2):
                ref = dense_propagate_reference(
                    cam[b].reshape(k, n).double(), aff[b].double(), idx_from, idx_to, n, beta, logt
                )
                scale = ref.abs().max().item()
                # float64: equal up to rounding; float32: 2^logt steps of float32 rounding (measured <= 1.3e-5)
                err64 = (got64[b].reshape(k, n) - ref).abs().max().item()
                assert err64 <= 1e-12 * scale, (beta, logt, b, err64, scale)
                err = (got[b].reshape(k, n).double() - ref).abs().max().item()
                assert err <= 3e-5 * scale, (beta, logt, b, err, scale)


@pytest.mark.parametrize("reference_pairs", [False, True])
def test_propagation_every_logt(reference_pairs):
    torch.manual_seed(5)
    h, w, radius, k = 9, 8, 5, 2
    n = h * w
    idx_from, idx_to = pair_indices(h, w, radius, reference=reference_pairs)
    aff = torch.rand(1, idx_from.numel(), dtype=torch.float64)
    cam = torch.rand(1, k, h, w, dtype=torch.float64)
    for logt in range(9):
        got = propagate_with_affinity(cam, aff, h, w, radius, beta=8, logt=logt, reference_pairs=reference_pairs)
        ref = dense_propagate_reference(cam[0].reshape(k, n), aff[0], idx_from, idx_to, n, 8, logt)
        assert torch.allclose(got[0].reshape(k, n), ref, rtol=1e-10, atol=1e-14), logt


def test_dense_reference_is_the_matrix_power():
    torch.manual_seed(0)
    h, w, radius, beta = 4, 5, 3, 2.0
    idx_from, idx_to = pair_indices(h, w, radius)
    aff = torch.rand(idx_from.numel(), dtype=torch.float64)
    cam = torch.rand(2, h * w, dtype=torch.float64)
    t = dense_transition(aff, idx_from, idx_to, h * w, beta)
    for logt in (0, 1, 3):
        expected = cam @ torch.linalg.matrix_power(t, 2**logt)
        got = dense_propagate_reference(cam, aff, idx_from, idx_to, h * w, beta, logt)
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reference_pairs", [False, True])
def test_transition_columns_sum_to_one_and_match_dense(reference_pairs):
    torch.manual_seed(1)
    h, w, radius, beta, b = 11, 10, 4, 8.0, 2
    n = h * w
    idx_from, idx_to = pair_indices(h, w, radius, reference=reference_pairs)
    aff = torch.rand(b, idx_from.numel(), dtype=torch.float64)
    step = transition_weights(aff, idx_from, idx_to, n, beta)
    assert step.layout == torch.sparse_csr and step.shape == (b * n, b * n)
    big = step.to_dense()
    for i in range(b):
        block_t = big[i * n : (i + 1) * n, i * n : (i + 1) * n].T  # T of image i
        assert torch.allclose(block_t.sum(dim=0), torch.ones(n, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(block_t, dense_transition(aff[i], idx_from, idx_to, n, beta), atol=1e-12)
        for j in range(b):
            if j != i:
                assert big[i * n : (i + 1) * n, j * n : (j + 1) * n].abs().sum() == 0
    nnz_per_row = step.crow_indices().diff()
    assert int(nnz_per_row.max()) <= 2 * len(idx_from.unique()) + 1


def test_transition_sums_duplicate_pairs_like_dense_reference():
    idx_from = torch.tensor([0, 0, 1, 2])
    idx_to = torch.tensor([1, 1, 2, 0])
    aff = torch.tensor([0.3, 0.4, 0.5, 0.6], dtype=torch.float64)
    step = transition_weights(aff, idx_from, idx_to, 3, 2.0).to_dense()
    assert torch.allclose(step.T, dense_transition(aff, idx_from, idx_to, 3, 2.0))
    cam = torch.rand(2, 3, dtype=torch.float64)
    ref = dense_propagate_reference(cam, aff, idx_from, idx_to, 3, 2.0, 2)
    assert torch.allclose(cam @ torch.linalg.matrix_power(step.T, 4), ref)


def test_single_pixel_spreads_only_within_its_region():
    h, w, d = 9, 12, 8
    feat = torch.zeros(d, h, w)
    feat[:, :, 6:] = 40.0  # right region: affinity to the left region exp(-40) ~ 4e-18, ^8 ~ 0
    cam = torch.zeros(2, h, w)
    cam[0, 4, 1] = 1.0  # seed in the left region
    cam[1, 2, 10] = 1.0  # seed in the right region
    out = propagate(cam, feat, radius=5, beta=8, logt=8)
    assert out.shape == cam.shape
    assert (out[0, :, :6] > 1e-4).all() and out[0, :, 6:].abs().max() < 1e-12
    assert (out[1, :, 6:] > 1e-4).all() and out[1, :, :6].abs().max() < 1e-12
    # Within a uniform region the walk approaches the stationary weights: nearly flat far from the border.
    assert out[0, :, :6].max() / out[0, :, :6].min() < 3


def test_propagate_does_not_modify_inputs_and_batches():
    torch.manual_seed(2)
    cam = torch.rand(4, 6, 7)
    feat = torch.randn(5, 6, 7)
    cam_copy, feat_copy = cam.clone(), feat.clone()
    out = propagate(cam, feat, radius=3, beta=8, logt=4)
    assert torch.equal(cam, cam_copy) and torch.equal(feat, feat_copy)
    batched = propagate(torch.stack([cam, cam * 2]), torch.stack([feat, feat.flip(2)]), radius=3, beta=8, logt=4)
    assert batched.shape == (2, 4, 6, 7)
    assert torch.allclose(batched[0], out, atol=1e-6)
    assert torch.allclose(batched[1], propagate(cam * 2, feat.flip(2), radius=3, beta=8, logt=4), atol=1e-6)


def test_propagate_matches_dense_from_embedding():
    torch.manual_seed(4)
    h, w, radius = 8, 6, 5
    cam = torch.rand(3, h, w, dtype=torch.float64)
    feat = torch.randn(16, h, w, dtype=torch.float64) * 0.3
    idx_from, idx_to = pair_indices(h, w, radius)
    flat = feat.reshape(16, -1)
    aff = torch.exp(-(flat[:, idx_from] - flat[:, idx_to]).abs().mean(0))
    ref = dense_propagate_reference(cam.reshape(3, -1), aff, idx_from, idx_to, h * w, 8, 8)
    got = propagate(cam, feat, radius=radius, beta=8, logt=8)
    assert got.dtype == torch.float64
    assert torch.allclose(got.reshape(3, -1), ref, rtol=1e-9, atol=1e-12)


def test_propagate_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        propagate(torch.rand(3, 4, 5), torch.rand(2, 4, 6))
    with pytest.raises(ValueError):
        propagate_with_affinity(torch.rand(1, 3, 4, 5), torch.rand(1, 7), 4, 5, 3)


def _strong_boundaries(h, w):
    """Affinities 1 - max boundary on each path, on a map with wide areas of strong boundary (IRN's case):
    many pixels nearly cut off from their neighbours, where float32 rounding of the walk shows most."""
    from affinitynet.ops.paths import path_max_affinity

    g = torch.Generator().manual_seed(7)
    noise = torch.rand(1, 1, 5, 7, generator=g, dtype=torch.float64) * 2 - 1
    field = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0]
    return path_max_affinity(torch.sigmoid(12 * field), 5)


@pytest.mark.parametrize("method", ["sparse", "stencil"])
def test_float32_walk_rounds_weights_from_float64_and_drifts_little_on_a_field_of_ones(method, monkeypatch):
    """The walk builds each step's weights in float64 and rounds them to the scores' dtype: their sums are 1 up to
    float32's last bits (5e-8; built in float32: 6e-7), so 256 steps of a field of ones stay within 2.5e-4 of 1
    (docs/randomwalk.md: 1.7e-4 measured, 2.2-3.2e-4 with float32 weights, irn's dense float32 walk 1.1e-4);
    float64 stays within 1e-12."""
    from affinitynet.ops import randomwalk, walk_stencil

    if method == "stencil" and not walk_stencil.available():
        pytest.skip("Numba is not installed")
    h, w = 48, 64
    aff = _strong_boundaries(h, w)
    idx_from, idx_to = pair_indices(h, w, 5)
    built = transition_weights(aff.double(), idx_from, idx_to, h * w, 10.0).to(torch.float32)
    assert (built.double() @ torch.ones(h * w, 1, dtype=torch.float64) - 1).abs().max() < 1e-7
    seen = []
    for module, name in ((randomwalk, "transition_weights"), (walk_stencil, "stencil_weights")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda aff, *a, real=real: seen.append(aff.dtype) or real(aff, *a))
    walked = propagate_with_affinity(torch.ones(1, 1, h, w), aff.float(), h, w, 5, beta=10, logt=8, method=method)
    assert seen == [torch.float64] and walked.dtype == torch.float32
    assert (walked.double() - 1).abs().max() < 2.5e-4
    exact = propagate_with_affinity(torch.ones(1, 1, h, w, dtype=torch.float64), aff, h, w, 5, beta=10, logt=8,
                                    method=method)
    assert (exact - 1).abs().max() < 1e-12
