"""Attention probes: exact statistics of a few query rows, from inside the attention function.

The attention function hands each layer's scaled q and (GQA-repeated) k to a probe callback;
we form the weights of the probed rows only, (B, H, R, n), reduce them to statistics at once
and keep those. The layer's output still comes from the fused kernel, so memory stays linear in
n and a 64k context fits wherever the plain forward fits. Never ``output_attentions``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from evalkit.core.requests import PROBE_METRICS, ProbeRequest, ProbeResult
from evalkit.models.body import decoder_body


def row_statistics(weights, allowed_keys, needle_start, needle_end):
    """Statistics of attention rows against a needle span.

    weights: (B, H, R, T_k) float32 rows that sum to 1 over allowed keys;
    allowed_keys: (B, 1, R, 1) number of keys each row may see (n);
    needle_start, needle_end: (B,) span per batch element. Returns metric -> (B, H) means over R.
    """
    import torch

    batch, heads, rows, keys = weights.shape
    position = torch.arange(keys, device=weights.device)  # (T_k,)
    in_needle = (position[None, :] >= needle_start[:, None]) & (position[None, :] < needle_end[:, None])  # (B, T_k)
    in_needle = in_needle[:, None, None, :]  # (B, 1, 1, T_k)
    needle_mass = (weights * in_needle).sum(-1)  # (B, H, R)
    max_weight, top = weights.max(-1)  # (B, H, R)
    entropy = -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1)  # (B, H, R), nats
    entropy_norm = entropy / torch.log(allowed_keys.squeeze(-1).clamp_min(2.0))  # (B, H, R) in [0, 1]
    best_needle = weights.masked_fill(~in_needle, -1.0).max(-1).values  # (B, H, R)
    needle_rank = (weights > best_needle[..., None]).sum(-1) + 1  # (B, H, R): 1 = a needle token is the top key
    top1_in_needle = in_needle.squeeze(1).squeeze(1).gather(-1, top.reshape(batch, -1)).reshape(batch, heads, rows)
    values = {
        "needle_mass": needle_mass,
        "max_weight": max_weight,
        "entropy": entropy,
        "entropy_norm": entropy_norm,
        "needle_rank": needle_rank.float(),
        "top1_in_needle": top1_in_needle.float(),
    }
    return {name: values[name].mean(-1) for name in PROBE_METRICS}  # each (B, H)


@contextmanager
def probing(model, modules, callback):
    """Route every attention module through evalkit's function with ``callback`` as its probe."""
    from evalkit.attention import IMPLEMENTATION

    before = model.config._attn_implementation
    if before != IMPLEMENTATION:
        model.set_attn_implementation(IMPLEMENTATION)  # plain softmax through evalkit = sdpa, plus the hook
    for module in modules:
        module.evalkit_probe = callback
    try:
        yield
    finally:
        for module in modules:
            module.evalkit_probe = None
        if before != IMPLEMENTATION:
            model.set_attn_implementation(before)


def run_probes(model, ids, requests: list[ProbeRequest]) -> list[ProbeResult]:
    """One forward of ``ids`` (B, T); statistics for every layer and head of each request."""
    import torch

    from evalkit.attention import attention_modules

    modules = [m for _, m in attention_modules(model)]
    wanted = requests[0].layers
    if wanted is not None:
        modules = [m for k, m in enumerate(modules) if getattr(m, "layer_idx", k) in wanted]
    rows = torch.tensor(requests[0].rows, device=ids.device)  # (R,) equal within a batch
    starts = torch.tensor([r.needle[0] for r in requests], device=ids.device)  # (B,)
    ends = torch.tensor([r.needle[1] for r in requests], device=ids.device)  # (B,)
    per_layer: dict[int, dict] = {}

    def callback(inputs):
        weights = inputs.weights(rows)  # (B, H, R, T_k)
        n = inputs.n[:, :, rows, :] if inputs.n.shape[2] > 1 else inputs.n  # (B|1, 1, R, 1)
        stats = row_statistics(weights, n.expand(weights.shape[0], 1, len(rows), 1), starts, ends)
        per_layer[len(per_layer) if inputs.layer_idx is None else inputs.layer_idx] = stats

    with probing(model, modules, callback), torch.inference_mode():
        decoder_body(model)(input_ids=ids, use_cache=False)
    layers = sorted(per_layer)
    results = []
    for b in range(len(requests)):
        metrics = {
            name: np.stack([per_layer[l][name][b].float().cpu().numpy() for l in layers]) for name in PROBE_METRICS
        }
        results.append(ProbeResult(tuple(layers), metrics))  # each (layers, heads)
    return results


def analytic_max_weight(n: np.ndarray, gap: float, s: float | None) -> np.ndarray:
    """Top attention weight for one logit ``gap`` above n - 1 equal logits.

    Softmax: e^gap / (e^gap + n - 1), which tends to 0 as n grows. SSMax multiplies logits by
    s * log n: weight = n^(s*gap) / (n^(s*gap) + n - 1), which stays bounded away from 0 when
    s * gap >= 1 (the SSMax paper's Figure 1).
    """
    n = np.asarray(n, dtype=np.float64)
    log_top = gap if s is None else s * np.log(n) * gap
    return 1.0 / (1.0 + (n - 1.0) * np.exp(-log_top))


def analytic_random_max_weight(n_values, s: float | None, samples: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Mean top weight for n i.i.d. N(0, scale^2) logits, by simulation in float64."""
    rng = np.random.default_rng(seed)
    out = []
    for n in n_values:
        tops = []
        for _ in range(samples):
            z = rng.standard_normal(int(n)) * scale
            if s is not None:
                z = z * s * math.log(n)
            z = z - z.max()
            tops.append(1.0 / np.exp(z).sum())
        out.append(float(np.mean(tops)))
    return np.array(out)
