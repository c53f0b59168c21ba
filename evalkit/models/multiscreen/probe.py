"""Focus for screening: what each tile's probed queries accept, and how much of it is the needle.

Screening has no distribution over keys: relevance is absolute, a key passes its tile's threshold
(alpha > 0) or is cut to exactly 0. For each probed query row, layer and tile the weights
``alpha_ij m_ij`` over every earlier key (rows x n per tile, never n x n) give, averaged over
the rows (``ProbeResult`` arrays shaped (layers, tiles)):

- ``accepted_keys``: keys with alpha m > 0 (within the window, above the threshold);
- ``needle_mass``: the share of the row's relevance mass on the needle span (0 when it accepts nothing),
  the same name and meaning as softmax focus's attention mass, so one figure shows all three;
- ``top1_in_needle``: whether the most relevant key lies in the needle span;
- ``entropy_norm``: the entropy of the relevance normalized to sum 1, over log of the keys the
  window allows (1 = spread evenly, 0 = one key), as for softmax;
- ``needle_accepted``: whether any needle key passes the threshold;
- ``needle_only``: whether the needle passes while no distractor does (a distractor: any key
  outside the needle span other than the query itself).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

METRICS = ("needle_mass", "top1_in_needle", "entropy_norm", "accepted_keys", "needle_accepted", "needle_only")


def probe(model, input_ids, request):
    """``ProbeResult`` for one sequence ``input_ids`` (1, T) and one ``ProbeRequest``."""
    import torch

    from evalkit.core.requests import ProbeResult
    from evalkit.models.multiscreen.screen import acceptance, relevance, softmask, window

    wanted = set(range(len(model.layers)) if request.layers is None else request.layers)
    rows = torch.tensor(request.rows, device=input_ids.device)  # (R,)
    start, end = request.needle
    T = input_ids.shape[1]
    keys = torch.arange(T, device=input_ids.device)  # (T,)
    distance = (rows[:, None] - keys[None, :]).double()  # (R, T): i - j
    in_needle = (keys >= start) & (keys < end)  # (T,)
    distractor = ~in_needle[None, :] & (keys[None, :] != rows[:, None])  # (R, T)
    layers, results = [], {name: [] for name in METRICS}
    with torch.inference_mode():
        table = torch.nn.functional.normalize(model.embed, dim=-1)  # (V, E)
        x = table[input_ids] * torch.exp(model.s_e)  # (1, T, E)
        for index, layer in enumerate(model.layers):
            infinite = model.infinite(index)
            if index in wanted:
                q, k, _, _ = layer.project(x, 0, infinite)  # (1, H, T, dK) each
                similarity = (q[0][:, rows] @ k[0].transpose(-1, -2)).double()  # (H, R, T)
                w = window(layer.s_w).double()  # (H,)
                w = torch.where(torch.tensor([t in infinite for t in range(layer.tiles)]), math.inf, w)
                mask = softmask(distance[None], w[:, None, None])  # (H, R, T): m = 1 for every earlier key at w = inf
                weights = relevance(similarity, acceptance(layer.s_r).double()[:, None, None]) * mask  # (H, R, T)
                results_for(weights, mask, in_needle, distractor, results)
                layers.append(index)
            x = x + layer(x, None, infinite)
    metrics = {name: np.stack(values) for name, values in results.items()}  # (layers, tiles)
    return ProbeResult(tuple(layers), metrics)


def results_for(weights, mask, in_needle, distractor, results: dict) -> None:
    """Append each metric of one layer, (tiles,) averaged over rows, to ``results``."""
    import torch

    total = weights.sum(-1)  # (H, R)
    needle = (weights * in_needle).sum(-1)  # (H, R)
    share = torch.where(total > 0, needle / total.clamp_min(1e-300), torch.zeros_like(total))  # (H, R)
    p = weights / total.clamp_min(1e-300)[..., None]  # (H, R, T)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # (H, R)
    allowed = (mask > 0).sum(-1).clamp_min(2).double()  # (H, R)
    accepted = weights > 0  # (H, R, T)
    needle_in = (accepted & in_needle).any(-1)  # (H, R)
    top = weights.argmax(-1)  # (H, R)
    values = {
        "needle_mass": share,
        "top1_in_needle": (in_needle[top] & (total > 0)).double(),
        "entropy_norm": torch.where(total > 0, entropy / torch.log(allowed), torch.full_like(total, math.nan)),
        "accepted_keys": accepted.sum(-1).double(),
        "needle_accepted": needle_in.double(),
        "needle_only": (needle_in & ~(accepted & distractor).any(-1)).double(),
    }
    for name, value in values.items():
        with warnings.catch_warnings():  # a tile that accepts nothing on every row: nan entropy, said as nan
            warnings.simplefilter("ignore", RuntimeWarning)
            results[name].append(np.nanmean(value.cpu().numpy(), axis=1))
