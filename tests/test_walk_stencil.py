"""The compiled stencil walk: equal to the release's dense walk and to the sparse product; method selection."""
import pytest
import torch
import torch.nn.functional as F

from affinitynet.ops import walk_stencil
from affinitynet.ops.pairs import pair_indices
from affinitynet.randomwalk import dense_propagate_reference, propagate, propagate_with_affinity
from affinitynet.ops.randomwalk import walk_method

needs_numba = pytest.mark.skipif(not walk_stencil.available(), reason="the stencil walk needs Numba")


def _labels(scores: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) scores -> (B, 8h, 8w) argmax after bilinear upsampling, as the random_walk stage labels."""
    up = F.interpolate(scores.float(), scale_factor=8, mode="bilinear", align_corners=False)
    return up.argmax(1)


@needs_numba
@pytest.mark.parametrize("h,w", [(7, 5), (13, 9), (1, 9), (12, 3)])
@pytest.mark.parametrize("radius", [1, 3, 5])
@pytest.mark.parametrize("reference_pairs", [False, True])
def test_stencil_equals_dense_reference_batched(h, w, radius, reference_pairs):
    torch.manual_seed(h * 31 + w * 7 + radius)
    n, k, b = h * w, 3, 2
    idx_from, idx_to = pair_indices(h, w, radius, reference=reference_pairs)
    aff = torch.rand(b, idx_from.numel())
    cam = torch.rand(b, k, h, w)
    for beta, logt in ((1, 0), (8, 3), (8, 8)):
        got = propagate_with_affinity(cam, aff, h, w, radius, beta=beta, logt=logt,
                                      reference_pairs=reference_pairs, method="stencil")
        got64 = propagate_with_affinity(cam.double(), aff.double(), h, w, radius, beta=beta, logt=logt,
                                        reference_pairs=reference_pairs, method="stencil")
        assert got.shape == cam.shape and got.dtype == cam.dtype and got64.dtype == torch.float64
        for i in range(b):
            ref = dense_propagate_reference(cam[i].reshape(k, n).double(), aff[i].double(), idx_from, idx_to, n,
                                            beta, logt)
            scale = ref.abs().max().item()
            assert (got64[i].reshape(k, n) - ref).abs().max().item() <= 1e-12 * scale
            assert (got[i].reshape(k, n).double() - ref).abs().max().item() <= 3e-5 * scale
            ref32 = dense_propagate_reference(cam[i].reshape(k, n), aff[i], idx_from, idx_to, n, beta, logt)
            assert torch.equal(_labels(got[i:i + 1]), _labels(ref32.reshape(1, k, h, w)))


@needs_numba
@pytest.mark.parametrize("reference_pairs", [False, True])
def test_stencil_matches_sparse_on_a_walk_sized_grid(reference_pairs):
    torch.manual_seed(3)
    h, w, radius, k = 24, 19, 5, 4
    idx_from, idx_to = pair_indices(h, w, radius, reference=reference_pairs)
    aff = torch.rand(1, idx_from.numel()) ** 0.2
    cam = torch.rand(1, k, h, w) ** 3
    kwargs = dict(beta=8, logt=8, reference_pairs=reference_pairs)
    stencil = propagate_with_affinity(cam, aff, h, w, radius, method="stencil", **kwargs)
    sparse = propagate_with_affinity(cam, aff, h, w, radius, method="sparse", **kwargs)
    assert torch.allclose(stencil, sparse, rtol=1e-5, atol=1e-6 * sparse.abs().max().item())
    assert torch.equal(_labels(stencil), _labels(sparse))


@needs_numba
def test_stencil_sums_repeated_pairs_like_the_dense_reference():
    idx_from = torch.tensor([0, 0, 1, 2, 4])
    idx_to = torch.tensor([1, 1, 2, 5, 5])
    aff = torch.tensor([[0.3, 0.4, 0.5, 0.6, 0.7]], dtype=torch.float64)
    cam = torch.rand(1, 2, 2, 3, dtype=torch.float64)
    got = walk_stencil.propagate_stencil(cam, aff, idx_from, idx_to, 2.0, 4)
    ref = dense_propagate_reference(cam[0].reshape(2, 6), aff[0], idx_from, idx_to, 6, 2.0, 2)
    assert torch.allclose(got[0].reshape(2, 6), ref, rtol=1e-12, atol=1e-15)


@needs_numba
def test_stencil_threads_split_the_work_without_changing_it():
    torch.manual_seed(4)
    h, w, radius = 17, 11, 5
    idx_from, idx_to = pair_indices(h, w, radius)
    aff = torch.rand(3, idx_from.numel())
    cam = torch.rand(3, 5, h, w)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = propagate_with_affinity(cam, aff, h, w, radius, method="stencil")
        torch.set_num_threads(4)  # more threads than images: channels are split between them
        four = propagate_with_affinity(cam, aff, h, w, radius, method="stencil")
        single = propagate_with_affinity(cam[1:2], aff[1:2], h, w, radius, method="stencil")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, four) and torch.equal(one[1:2], single)


@needs_numba
def test_stencil_does_not_modify_inputs_and_handles_empty_stacks():
    torch.manual_seed(5)
    cam, feat = torch.rand(3, 6, 7), torch.randn(4, 6, 7)
    cam_copy, feat_copy = cam.clone(), feat.clone()
    out = propagate(cam, feat, radius=3, logt=4, method="stencil")
    assert torch.equal(cam, cam_copy) and torch.equal(feat, feat_copy)
    assert torch.allclose(out, propagate(cam, feat, radius=3, logt=4, method="sparse"), rtol=1e-5, atol=1e-7)
    empty = propagate(torch.zeros(0, 6, 7), feat, radius=3, logt=4, method="stencil")
    assert empty.shape == (0, 6, 7)


def test_method_selection():
    assert walk_method("sparse", torch.device("cpu")) == "sparse"
    assert walk_method("auto", torch.device("cuda")) == "sparse"  # the stencil kernel is CPU-only
    assert walk_method("auto", torch.device("cpu"), 4) == ("stencil" if walk_stencil.available() else "sparse")
    assert walk_method("auto", torch.device("cpu"), 21) == "sparse"  # as fast for many channels (bench_randomwalk)
    with pytest.raises(ValueError, match="valid: auto, sparse, stencil"):
        walk_method("dense", torch.device("cpu"))


def test_auto_falls_back_to_sparse_without_numba(monkeypatch):
    import affinitynet.ops.randomwalk as rw

    monkeypatch.setattr(rw, "stencil_available", lambda: False)
    assert walk_method("auto", torch.device("cpu")) == "sparse"
    torch.manual_seed(6)
    cam, feat = torch.rand(2, 5, 6), torch.randn(3, 5, 6)
    assert propagate(cam, feat, radius=3, logt=3).shape == cam.shape
