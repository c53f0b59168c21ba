"""Screening, the paper's replacement for softmax attention, for a group of tiles at once.

For unit queries, keys and values (after MiPE) of one group of tiles, the unnormalized aggregate

    h_i = sum_{j <= i} alpha_ij m_ij v_j,   alpha_ij = max(1 - r (1 - q_i . k_j), 0) ** 2,
    m_ij = (cos(pi (j - i) / w) + 1) / 2 for i - w < j <= i, else 0     (m = 1 for w = infinity)

and TanhNorm ``u = tanh(|h|) h / |h|`` on top of it. Two ways to compute it, neither builds an
n x n matrix:

- ``screen_banded`` for finite windows: queries in blocks of ``Q``, each block against the
  ``Q + L - 1`` keys that can reach it (``L`` = the longest band, ceil(w)); time and memory
  O(n (Q + L)) = O(n w), and blocks are taken a few at a time to hold a memory budget.
- ``screen_full`` for w = infinity: exact, queries in chunks against every earlier key, so memory
  is O(chunk x n), linear in n; time is O(n^2), as it must be.

Only q . k and the weights' product with v are matrix products; the relevance, the softmask and
the key mask are elementwise on the block, so there is nothing here a kernel library would fuse
differently for its result (only for its speed).
"""

from __future__ import annotations

import math

import torch

SCORE_BUDGET = 1 << 22  # score elements alive at once per call (16 MiB in float32)


def window(s_w: torch.Tensor) -> torch.Tensor:
    """The learned window w = exp(s_w) + 1 (at least 1: the query itself)."""
    return torch.exp(s_w) + 1.0


def acceptance(s_r: torch.Tensor) -> torch.Tensor:
    """The acceptance width r = exp(s_r) + 1: keys with cosine similarity above 1 - 1/r pass."""
    return torch.exp(s_r) + 1.0


def relevance(similarity: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Trim-and-square: ``max(1 - r (1 - s), 0) ** 2``; zero below the threshold s = 1 - 1/r."""
    return torch.clamp(1.0 - r * (1.0 - similarity), min=0.0).square()


def softmask(distance: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(cos(pi d / w) + 1) / 2`` for 0 <= d < w, else 0 (d = i - j, the query's distance back)."""
    inside = (distance >= 0) & (distance < w)
    return torch.where(inside, 0.5 * (torch.cos(math.pi * distance / w) + 1.0), torch.zeros((), dtype=w.dtype))


def tanh_norm(h: torch.Tensor) -> torch.Tensor:
    """``tanh(|h|) h / |h|`` over the last axis; 0 where h is 0 (tanh(x) / x -> 1 as x -> 0)."""
    norm = h.norm(dim=-1, keepdim=True)
    tiny = torch.finfo(h.dtype).tiny ** 0.5
    scale = torch.where(norm > tiny, torch.tanh(norm) / norm.clamp_min(tiny), torch.ones_like(norm))
    return h * scale


def mipe(x: torch.Tensor, rate: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Rotate the first two coordinates of ``x`` (B, h, T, d) by ``rate * position`` per tile.

    ``rate`` (h,) is pi gamma(w) / w in radians per position. The angle is formed in float64 and
    reduced mod 2 pi before the cosine: at position 1e5 a float32 angle would be off by 1e-2 rad.
    """
    T = x.shape[-2]
    positions = torch.arange(offset, offset + T, device=x.device, dtype=torch.float64)  # (T,)
    angle = torch.remainder(rate.to(torch.float64)[:, None] * positions[None, :], 2 * math.pi)  # (h, T)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)  # (h, T)
    a, b, rest = x[..., 0], x[..., 1], x[..., 2:]  # (B, h, T), (B, h, T), (B, h, T, d - 2)
    return torch.cat([(a * cos - b * sin)[..., None], (a * sin + b * cos)[..., None], rest], dim=-1)  # (B, h, T, d)


def screen_banded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    r: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    budget: int = SCORE_BUDGET,
) -> torch.Tensor:
    """The aggregate h (B, h, T, dV) of tiles with finite windows ``w`` (h,), in O(T w).

    q, k: (B, h, T, dK) unit, after MiPE; v: (B, h, T, dV) unit; r: (h,); key_mask: (B, T), 1 for
    real tokens (a padded key is screened out), or None.
    """
    B, H, T, dK = q.shape
    dV = v.shape[-1]
    band = int(min(math.ceil(float(w.detach().max())), T))  # L: keys a query can reach, itself included
    block = T if T <= 64 else max(band, 16)  # Q: queries per block; the block reads Q + L - 1 keys
    blocks = -(-T // block)  # nb
    span = block + band - 1
    padded = blocks * block
    dtype = q.dtype
    # Keys get L - 1 zero rows in front (the first block's missing history) and enough behind.
    qp = torch.nn.functional.pad(q, (0, 0, 0, padded - T))  # (B, H, nb*Q, dK)
    kp = torch.nn.functional.pad(k, (0, 0, band - 1, padded - T))  # (B, H, L-1 + nb*Q, dK)
    vp = torch.nn.functional.pad(v, (0, 0, band - 1, padded - T))  # (B, H, L-1 + nb*Q, dV)
    valid = torch.ones(B, T, dtype=dtype, device=q.device) if key_mask is None else key_mask.to(dtype)
    valid = torch.nn.functional.pad(valid, (band - 1, padded - T))  # (B, L-1 + nb*Q): 0 on the padding
    # d = i - j for query a of a block and its c-th key: a + L - 1 - c, the same in every block.
    a = torch.arange(block, device=q.device)
    c = torch.arange(span, device=q.device)
    distance = (a[:, None] + band - 1 - c[None, :]).to(w.dtype)  # (Q, Q+L-1)
    mask = softmask(distance[None], w[:, None, None]).to(dtype)  # (H, Q, Q+L-1)
    r = r.to(dtype).view(1, H, 1, 1, 1)  # (1, H, 1, 1, 1)
    out = []
    per_block = B * H * block * span
    step = max(1, budget // per_block)  # blocks at once
    for first in range(0, blocks, step):
        n = min(step, blocks - first)
        start, stop = first * block, (first + n) * block
        qb = qp[:, :, start:stop].reshape(B, H, n, block, dK)  # (B, H, n, Q, dK)
        kb = kp[:, :, start : stop + band - 1].unfold(2, span, block)  # (B, H, n, dK, Q+L-1): a view
        vb = vp[:, :, start : stop + band - 1].unfold(2, span, block)  # (B, H, n, dV, Q+L-1)
        mb = valid[:, start : stop + band - 1].unfold(1, span, block)  # (B, n, Q+L-1)
        similarity = qb @ kb  # (B, H, n, Q, Q+L-1)
        weights = relevance(similarity, r) * mask[None, :, None] * mb[:, None, :, None, :]
        hb = weights @ vb.transpose(-1, -2)  # (B, H, n, Q, dV)
        out.append(hb.reshape(B, H, n * block, dV))  # (B, H, n*Q, dV)
    return torch.cat(out, dim=2)[:, :, :T]  # (B, H, T, dV)


def screen_full(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    budget: int = SCORE_BUDGET,
) -> torch.Tensor:
    """The aggregate h (B, h, T, dV) of w = infinity tiles: every earlier key, mask 1, exact.

    Queries in chunks of C against keys [0, end of chunk): memory O(C T), linear in T.
    """
    B, H, T, _ = q.shape
    dtype = q.dtype
    r = r.to(dtype)[:, None, None]  # (H, 1, 1)
    chunk = max(1, min(T, budget // max(1, B * H * T)))  # C
    inplace = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or r.requires_grad))
    out = []
    for start in range(0, T, chunk):
        stop = min(T, start + chunk)
        similarity = q[:, :, start:stop] @ k[:, :, :stop].transpose(-1, -2)  # (B, H, C, stop)
        i = torch.arange(start, stop, device=q.device)[:, None]
        j = torch.arange(start, stop, device=q.device)[None, :]
        if inplace:  # inference: the same arithmetic without a new tensor per step
            weights = similarity.sub_(1.0).mul_(r).add_(1.0).clamp_(min=0.0).square_()
        else:
            weights = relevance(similarity, r)
        # causal: only the chunk's own keys [start, stop) can lie after a query
        weights[..., start:stop].masked_fill_(j > i, 0.0)
        if key_mask is not None:
            weights = weights * key_mask[:, None, None, :stop].to(dtype)
        out.append(weights @ v[:, :, :stop])  # (B, H, C, dV)
    return torch.cat(out, dim=2)  # (B, H, T, dV)
