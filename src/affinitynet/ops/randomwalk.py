"""Random walk on the pair-affinity graph of the feature grid (docs/randomwalk.md), sparse and exact.

The transition matrix is T = A^beta D^-1 (A: pair affinities both ways, 1 on the diagonal, 0 elsewhere;
D: column sums), and the CAM stack v (K, N) is propagated t = 2^logt steps, v <- v T.
We never build the dense N x N matrix: a step is the sparse product x <- T^T x with x = v^T (N, K),
and T^T = D^-1 A^beta has ~2 * (pairs per node) + 1 entries per row (69 at radius 5), stored as a
block-diagonal CSR tensor over the batch; CSR products also run on CUDA. On the CPU, the same
weights applied as a compiled stencil over the offsets (``ops.walk_stencil``) are faster still.
"""
from __future__ import annotations

import warnings

import torch

from affinitynet.ops.affinity import radius_pair_affinity
from affinitynet.ops.pairs import pair_indices
from affinitynet.ops.walk_stencil import available as stencil_available
from affinitynet.ops.walk_stencil import propagate_stencil

WALK_METHODS = ("auto", "sparse", "stencil")
STENCIL_MAX_CHANNELS = 8  # auto: beyond this the sparse product, which reads its matrix once for all channels, is as fast


def transition_weights(
    aff: torch.Tensor, idx_from: torch.Tensor, idx_to: torch.Tensor, n: int, beta: float
) -> torch.Tensor:
    """Sparse CSR (B*n, B*n) block-diagonal T^T = D^-1 A^beta (row-stochastic) from pair affinities aff (B, P) or (P,)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if aff.dim() == 1:
        aff = aff.unsqueeze(0)
    b, p = aff.shape
    if idx_from.numel() != p or idx_to.numel() != p:
        raise ValueError(f"aff has {p} pairs per image but the index lists have {idx_from.numel()}, {idx_to.numel()}")
    device, dtype = aff.device, aff.dtype
    idx_from, idx_to = idx_from.to(device), idx_to.to(device)
    # One image's sparsity pattern: entries (from, to), (to, from), (i, i), sorted row-major.
    diag = torch.arange(n, device=device)
    rows = torch.cat([idx_from, idx_to, diag])
    cols = torch.cat([idx_to, idx_from, diag])
    values = torch.cat([aff, aff, torch.ones(b, n, device=device, dtype=dtype)], dim=1)  # (B, 2P + n)
    order = torch.argsort(rows * n + cols)
    rows, cols, values = rows[order], cols[order], values[:, order]
    duplicate = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1])
    if bool(duplicate.any()):
        # Sum repeated pairs before the power, as the reference's sparse -> dense conversion does.
        first = torch.cat([torch.ones(1, dtype=torch.bool, device=device), ~duplicate])
        slot = torch.cumsum(first, 0) - 1
        values = values.new_zeros(b, int(first.sum())).index_add_(1, slot, values)
        rows, cols = rows[first], cols[first]
    values = values**beta
    values = values / torch.zeros(b, n, device=device, dtype=dtype).index_add_(1, rows, values)[:, rows]
    counts = torch.bincount(rows, minlength=n)  # (n,) entries per row
    crow = torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.cumsum(counts.repeat(b), 0)])
    block = (torch.arange(b, device=device) * n).unsqueeze(1)  # (B, 1): column offset of each image's block
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            crow, (cols + block).reshape(-1), values.reshape(-1), (b * n, b * n), check_invariants=False
        )


def walk_method(method: str, device: torch.device, channels: int = 1) -> str:
    """The walk implementation ``method`` (auto | sparse | stencil) resolves to for ``channels`` maps on ``device``."""
    if method not in WALK_METHODS:
        raise ValueError(f"unknown walk method {method!r} (valid: {', '.join(WALK_METHODS)})")
    if method == "auto":
        cpu = torch.device(device).type == "cpu"
        return "stencil" if cpu and channels <= STENCIL_MAX_CHANNELS and stencil_available() else "sparse"
    return method


def propagate_with_affinity(
    cam: torch.Tensor,
    aff: torch.Tensor,
    h: int,
    w: int,
    radius: int,
    *,
    beta: float = 8.0,
    logt: int = 8,
    reference_pairs: bool = False,
    method: str = "auto",
) -> torch.Tensor:
    """Random walk of cam (B, K, h, w) with pair affinities aff (B, P) of pair_indices(h, w, radius) -> (B, K, h, w).

    ``method``: ``sparse`` (CSR products, any device), ``stencil`` (the compiled CPU kernel of
    ``ops.walk_stencil``), or ``auto``: the stencil for CPU tensors of up to 8 channels (background and the
    image's classes) when Numba is installed, else sparse.
    """
    if cam.dim() != 4 or cam.shape[2:] != (h, w):
        raise ValueError(f"cam must be (B, K, {h}, {w}), got shape {tuple(cam.shape)}")
    if logt < 0:
        raise ValueError(f"logt must be >= 0, got {logt}")
    b, k = cam.shape[:2]
    n = h * w
    idx_from, idx_to = pair_indices(h, w, radius, reference=reference_pairs, device=cam.device)
    if aff.dim() == 1:
        aff = aff.unsqueeze(0)
    if aff.shape != (b, idx_from.numel()):
        raise ValueError(f"aff must be ({b}, {idx_from.numel()}) for this grid and radius, got {tuple(aff.shape)}")
    method = walk_method(method, cam.device, k)
    with torch.no_grad():
        if method == "stencil":
            return propagate_stencil(cam, aff, idx_from, idx_to, beta, 2**logt)
        step = transition_weights(aff.double(), idx_from, idx_to, n, beta).to(cam.dtype)
        x = cam.reshape(b, k, n).transpose(1, 2).reshape(b * n, k).contiguous()  # (B*N, K)
        for _ in range(2**logt):
            x = step @ x
        return x.reshape(b, n, k).transpose(1, 2).reshape(b, k, h, w).contiguous()


def propagate(
    cam: torch.Tensor,
    feat: torch.Tensor,
    *,
    radius: int = 5,
    beta: float = 8.0,
    logt: int = 8,
    reference_pairs: bool = False,
    method: str = "auto",
) -> torch.Tensor:
    """Random walk of cam (K, h, w) [or (B, K, h, w)] with affinities of embedding feat (D, h, w) [(B, D, h, w)]; same shape out."""
    if cam.dim() != feat.dim() or cam.dim() not in (3, 4):
        raise ValueError(f"cam and feat must both be unbatched or batched, got {tuple(cam.shape)} and {tuple(feat.shape)}")
    batched = cam.dim() == 4
    if not batched:
        cam, feat = cam.unsqueeze(0), feat.unsqueeze(0)
    if cam.shape[0] != feat.shape[0] or cam.shape[2:] != feat.shape[2:]:
        raise ValueError(f"cam {tuple(cam.shape)} and feat {tuple(feat.shape)} disagree on batch or grid size")
    h, w = cam.shape[2:]
    with torch.no_grad():
        aff = radius_pair_affinity(feat, radius, reference=reference_pairs)
    out = propagate_with_affinity(
        cam, aff.to(cam.device), h, w, radius, beta=beta, logt=logt, reference_pairs=reference_pairs, method=method
    )
    return out if batched else out[0]


def dense_propagate_reference(
    cam: torch.Tensor,
    aff: torch.Tensor,
    idx_from: torch.Tensor,
    idx_to: torch.Tensor,
    n: int,
    beta: float,
    logt: int,
) -> torch.Tensor:
    """REFERENCE ONLY (O(N^2) memory, O(logt N^3) time): the original code's dense walk, cam (K, n) -> (K, n)."""
    # Mirrors the released AffinityNet inference: sparse -> dense A (duplicates summed), A ** beta,
    # column normalisation, logt squarings, one product. Computed in cam's dtype.
    a = torch.zeros(n, n, dtype=cam.dtype, device=cam.device)
    values = aff.to(cam.dtype)
    a.index_put_((idx_from, idx_to), values, accumulate=True)
    a.index_put_((idx_to, idx_from), values, accumulate=True)
    a += torch.eye(n, dtype=cam.dtype, device=cam.device)
    a = a**beta
    trans = a / a.sum(dim=0, keepdim=True)
    for _ in range(logt):
        trans = trans @ trans
    return cam @ trans
