"""The random walk as a compiled stencil on the CPU: the same weights and sums as the sparse product, 2-6x faster.

Every node of the grid has the same neighbour offsets (68 at radius 5, plus itself), so one step
``x <- T^T x`` is a stencil with per-pixel weights: ``out[k, p] = sum_o W[o, p] * x[k, p + offset_o]``.
We keep each channel as a zero-padded plane, flattened row by row, and compute one step as, for each
offset, a multiply-add of the weight row with the input shifted by that offset: long contiguous loops
that the compiler vectorises. Outputs in the padding columns get weight 0, so the padding stays 0.
The weights come from ``transition_weights``' sparse matrix and each output sums its offsets in the
order of that matrix's columns, so the results equal the sparse product's up to fused multiply-adds.

Channels never interact, so channel groups (and images) run in separate threads without any
synchronisation: ``torch.get_num_threads()`` threads share the work.

The kernel is compiled with Numba (a PyPI wheel; no compiler needed) on first use and cached on disk.
Without Numba, ``available()`` is False and the walk uses the sparse product.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

ROW_BLOCK = 8  # rows of the grid per block: a block's accumulators and inputs stay in the L1/L2 cache
GROUP = 8  # at most this many channels share one pass over a block (21 channels: groups of 7)


@functools.lru_cache(maxsize=1)
def _kernel():
    """The compiled step loop, or None when Numba is not installed."""
    try:
        import numba
    except ImportError:
        return None
    u64 = numba.uint64  # unsigned indices: Numba adds no negative-index wraparound, so the loops vectorise

    @numba.njit(cache=True, nogil=True, fastmath={"contract"})
    def walk(xs, ys, wf, offs, steps, channels, positions, width, plane, lead, row_block, group):
        # xs, ys: (channels * plane,) ping-pong buffers; output position p (0 <= p < positions) of channel
        # k lives at k * plane + lead + p and its neighbour o at k * plane + offs[o] + p.
        # wf: (offsets * positions,) weights, offset-major. Returns the buffer holding the last step.
        n_off = offs.shape[0]
        pos = u64(positions)
        pl = u64(plane)
        ld = u64(lead)
        block = row_block * width
        acc = np.zeros(group * block, xs.dtype)
        for s in range(steps):
            src = xs if s % 2 == 0 else ys
            dst = ys if s % 2 == 0 else xs
            for r in range(0, positions, block):
                r0 = u64(r)
                n = u64(min(block, positions - r))
                for k0 in range(0, channels, group):
                    kn = min(group, channels - k0)
                    for i in range(u64(kn) * n):
                        acc[i] = 0.0
                    for o in range(n_off):
                        ou = u64(o)
                        wb = ou * pos + r0
                        so = offs[ou] + r0
                        for kk in range(kn):
                            sb = u64(k0 + kk) * pl + so
                            ab = u64(kk) * n
                            for i in range(n):
                                acc[ab + i] += wf[wb + i] * src[sb + i]
                    for kk in range(kn):
                        db = u64(k0 + kk) * pl + ld + r0
                        ab = u64(kk) * n
                        for i in range(n):
                            dst[db + i] = acc[ab + i]
        return xs if steps % 2 == 0 else ys

    return walk


def available() -> bool:
    """Whether the compiled stencil can run here (Numba is installed)."""
    return _kernel() is not None


def stencil_weights(
    aff: torch.Tensor, idx_from: torch.Tensor, idx_to: torch.Tensor, h: int, w: int, beta: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pair affinities aff (B, P) on an h x w grid -> offsets (O, 2) as (dy, dx), weights (B, O, h, w), padding.

    ``weights[b, o, y, x]`` is the entry of T^T = D^-1 A^beta (``transition_weights``) linking pixel (y, x) to
    (y + dy_o, x + dx_o); offsets are sorted by (dy, dx), the column order of the sparse matrix's rows,
    and the pixel itself is one of them. A pixel without a neighbour at some offset (the grid border, a
    trimmed pair set) gets weight 0 there. Repeated pairs are summed before the power, as there.
    """
    b, n = aff.shape[0], h * w
    dy, dx = idx_to // w - idx_from // w, idx_to % w - idx_from % w
    pad = int(torch.maximum(dy.abs(), dx.abs()).max()) if dy.numel() else 0
    side = 2 * pad + 1
    forward, backward = (dy + pad) * side + dx + pad, (pad - dy) * side + pad - dx
    itself = torch.tensor([pad * side + pad])
    used = torch.cat([forward, backward, itself]).bincount(minlength=side * side).nonzero().reshape(-1)  # (dy, dx) sorted
    slot = torch.full((side * side,), -1, dtype=torch.long)
    slot[used] = torch.arange(used.numel())
    a = torch.zeros(b, used.numel() * n, dtype=aff.dtype)
    a.index_add_(1, slot[forward] * n + idx_from, aff)
    a.index_add_(1, slot[backward] * n + idx_to, aff)
    a = a.view(b, used.numel(), n)
    a[:, slot[itself]] += 1.0
    a = a**beta  # absent neighbours stay 0 (beta > 0)
    weights = a / a.sum(dim=1, keepdim=True)
    offsets = torch.stack([used // side - pad, used % side - pad], dim=1)
    return offsets, weights.view(b, -1, h, w), pad


def _chunks(b: int, k: int, parts: int) -> list[tuple[int, int, int]]:
    """(image, first channel, channel count) pieces of a (B, K) stack for ``parts`` threads."""
    per_image = max(1, -(-parts // max(b, 1)))  # split channels only when there are fewer images than threads
    size = max(1, -(-k // per_image))
    return [(i, k0, min(size, k - k0)) for i in range(b) for k0 in range(0, k, size)]


def propagate_stencil(
    cam: torch.Tensor, aff: torch.Tensor, idx_from: torch.Tensor, idx_to: torch.Tensor, beta: float, steps: int
) -> torch.Tensor:
    """``steps`` walk steps of cam (B, K, h, w) (float32/64, CPU) over pair affinities aff (B, P) of (idx_from, idx_to) -> (B, K, h, w)."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("the stencil walk needs Numba: pip install numba (or use method='sparse')")
    if cam.device.type != "cpu":
        raise ValueError(f"the stencil walk runs on the CPU, got a tensor on {cam.device} (use method='sparse')")
    if cam.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the stencil walk needs float32 or float64, got {cam.dtype}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    b, k, h, w = cam.shape
    offsets, weights, pad = stencil_weights(aff.double(), idx_from.cpu(), idx_to.cpu(), h, w, beta)
    dtype = np.float32 if cam.dtype == torch.float32 else np.float64
    wp, hp = w + 2 * pad, h + 2 * pad
    plane = hp * wp + 2 * pad  # pad elements of slack at both ends: the shifted reads stay inside the plane
    lead = pad + pad * wp  # flat index of the first output row (padded row `pad`, column 0)
    positions = h * wp  # output rows in full, padding columns included (their weight is 0)
    wf = np.zeros((b, len(offsets), h, wp), dtype)
    wf[..., pad:pad + w] = weights.numpy()
    offs = (lead + offsets[:, 0] * wp + offsets[:, 1]).numpy().astype(np.uint64)
    x = np.zeros((b, k, plane), dtype)
    x[:, :, pad:pad + hp * wp].reshape(b, k, hp, wp)[:, :, pad:pad + h, pad:pad + w] = cam.detach().numpy()
    out = np.empty((b, k, h, w), dtype)

    def run(piece: tuple[int, int, int]) -> None:
        i, k0, kn = piece
        xs = x[i, k0:k0 + kn].reshape(-1)  # a copy-free view: contiguous channels of one image
        group = kn if kn <= GROUP else -(-kn // -(-kn // GROUP))  # balanced groups of at most GROUP
        res = kernel(xs, np.zeros_like(xs), wf[i].reshape(-1), offs, steps, kn, positions, wp, plane, lead,
                     ROW_BLOCK, group)
        planes = res.reshape(kn, plane)[:, pad:pad + hp * wp].reshape(kn, hp, wp)
        out[i, k0:k0 + kn] = planes[:, pad:pad + h, pad:pad + w]

    pieces = _chunks(b, k, torch.get_num_threads()) if k else []
    threads = min(len(pieces), torch.get_num_threads())
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, pieces))
    else:
        for piece in pieces:
            run(piece)
    return torch.from_numpy(out)
