"""``evalkit bench screening``: one forward pass without a KV cache, Multiscreen vs a softmax
Transformer (SDPA) of the same width and depth, per context length.

The paper's latency claim (design.md, "Screening"): over 100,000 tokens Multiscreen is 2.3x-3.2x
faster than an SDPA Transformer because finite-window tiles cost O(n w) and only 9.4% (4.7% after
continued pretraining) of tiles fall back to w = infinity, which cost O(n^2) like attention. So
the share of tiles at w = infinity is this bench's setting, reported beside every ratio.

Both models have random weights (speed does not depend on them): Multiscreen at the paper's
shape for ``psi`` (N_L = N_H = psi, d_E = psi^2, d_K 16, d_V 64, w_th 256, the finite windows at
their initial spacing 2..257), with ``round(share x tiles)`` tiles spread over the layers set to
w = infinity; the Transformer with d_E = psi^2, psi layers, heads of 64 (at least one), RoPE,
RMSNorm, a 4x GELU MLP and ``F.scaled_dot_product_attention(is_causal=True)``, tied embeddings;
both with the same vocabulary, full logits included. Each length runs both once per round, taking
turns, after one warm-up call each at the shortest length; lengths stop at the first that does
not fit in memory or would overrun ``budget_s``.
"""

from __future__ import annotations

import math
import time

import numpy as np

PAPER_INFINITE_SHARE = 0.094  # the paper's base model; 0.047 after continued pretraining


def softmax_transformer(width: int, layers: int, vocab: int):
    """A plain pre-norm RoPE Transformer whose attention is SDPA (the paper's baseline kind)."""
    import torch
    from torch import nn

    heads = max(1, width // 64)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.RMSNorm(width), nn.RMSNorm(width)
            self.qkv = nn.Linear(width, 3 * width, bias=False)
            self.out = nn.Linear(width, width, bias=False)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # (B, heads, T, head_dim)
            a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, head_dim)
            x = x + self.out(a.transpose(1, 2).reshape(B, T, width))  # (B, T, E)
            return x + self.mlp(self.norm2(x))

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]  # (B, heads, T, half)
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.RMSNorm(width)

        def forward(self, ids):
            T = ids.shape[1]
            half = width // heads // 2
            freq = 10000.0 ** (-torch.arange(half, device=ids.device, dtype=torch.float32) / half)  # (half,)
            angle = torch.arange(T, device=ids.device, dtype=torch.float32)[:, None] * freq  # (T, half)
            cos, sin = angle.cos().to(self.embed.weight.dtype), angle.sin().to(self.embed.weight.dtype)
            x = self.embed(ids)  # (B, T, E)
            for block in self.blocks:
                x = block(x, cos, sin)
            return self.norm(x) @ self.embed.weight.T  # (B, T, V)

    return Transformer()


def screening_model(psi: int, vocab: int, share: float):
    """The paper's shape for ``psi`` with ``round(share x tiles)`` tiles at w = infinity."""
    from dataclasses import replace

    from evalkit.models.multiscreen import Multiscreen, MultiscreenConfig

    config = MultiscreenConfig.from_psi(psi, vocab_size=vocab, training_length=4096)
    total = config.layers * config.tiles
    count = int(round(share * total))
    # spread over the layers (at most as many per layer as needed), the longest windows of a layer first
    layers: list[list[int]] = [[] for _ in range(config.layers)]
    for i in range(count):
        layers[(i * config.layers // count) if count <= config.layers else i % config.layers].append(0)
    layers = [[config.tiles - 1 - k for k in range(len(row))] for row in layers]
    model = Multiscreen(replace(config, infinite_tiles=tuple(tuple(sorted(t)) for t in layers)))
    return model


def bench_screening(
    lengths: str = "4k,8k,16k,32k",
    device: str = "auto",
    dtype: str = "float32",
    psi: int = 8,
    infinite_share: float = PAPER_INFINITE_SHARE,
    vocab: int = 512,
    rounds: int = 1,
    budget_s: float = 300.0,
    out: str | None = None,
):
    """Seconds of one forward pass per length for both models, the ratio softmax / screening (wall
    time, and on a CPU also this process's CPU time, the steadier of the two on a shared machine)."""
    import pandas as pd
    import torch

    from evalkit.core.errors import ConfigError
    from evalkit.core.grid import parse_lengths
    from evalkit.models.loading import pick_device

    if not 0 <= infinite_share <= 1:
        raise ConfigError(f"bad --infinite-share {infinite_share}", "give a share of tiles within 0..1, e.g. 0.094")
    torch_device = pick_device(device)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    screen = screening_model(psi, vocab, infinite_share).to(torch_device, torch_dtype).eval()
    if torch_device.type == "cuda":
        screen.set_score_budget(1 << 27)
    softmax = softmax_transformer(psi * psi, psi, vocab).to(torch_device, torch_dtype).eval()
    contenders = {"screening": screen, "softmax SDPA": softmax}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in contenders.items()}
    share = screen.infinite_share()

    def sync():
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    def once(model, ids) -> tuple[float, float]:
        """(wall seconds, this process's CPU seconds): on a shared CPU the second is what the
        forward itself cost, the first includes waiting for cores other jobs hold."""
        sync()
        started, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            model(ids)
        sync()
        return time.perf_counter() - started, time.process_time() - cpu

    grid = parse_lengths(lengths)
    rows, spent, previous = [], 0.0, None
    started = time.perf_counter()
    for n in grid:
        ids = torch.randint(0, vocab, (1, n), device=torch_device)
        if previous is not None:
            # the w = infinity tiles and attention grow as n^2: the next length costs up to 4x this one
            expected = 4 * previous * rounds
            if spent + expected > budget_s:
                rows.append({"context_length": n, "note": f"skipped: would overrun the {budget_s:.0f} s budget"})
                break
        else:
            for model in contenders.values():  # warm-up: thread pools, allocator, kernels
                once(model, ids[:, : min(n, 1024)])
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        try:
            for _ in range(rounds):
                for name, model in contenders.items():
                    times[name].append(once(model, ids))
        except torch.OutOfMemoryError:
            rows.append({"context_length": n, "note": "did not fit in memory"})
            break
        wall = {name: float(np.median([t[0] for t in ts])) for name, ts in times.items()}
        cpu = {name: float(np.median([t[1] for t in ts])) for name, ts in times.items()}
        previous = sum(wall.values())
        spent = time.perf_counter() - started
        row = {
            "context_length": n,
            "screening_s": round(wall["screening"], 4),
            "softmax_sdpa_s": round(wall["softmax SDPA"], 4),
            "softmax_over_screening": round(wall["softmax SDPA"] / wall["screening"], 3),
        }
        if torch_device.type == "cpu":
            row.update(
                screening_cpu_s=round(cpu["screening"], 4),
                softmax_sdpa_cpu_s=round(cpu["softmax SDPA"], 4),
                softmax_over_screening_cpu=round(cpu["softmax SDPA"] / cpu["screening"], 3),
            )
        rows.append({**row, "infinite_share": round(share, 4), "note": ""})
    frame = pd.DataFrame(rows)
    windows = screen.learned_windows().numpy()  # (L, H)
    finite = np.array(
        [w for layer, row in enumerate(windows) for t, w in enumerate(row) if t not in screen.infinite(layer)]
    )
    frame.attrs["caption"] = (
        f"one forward pass, batch 1, no KV cache, {dtype} on {torch_device}; psi {psi}: screening "
        f"{psi} layers x {psi} tiles, width {psi * psi}, {share:.1%} of tiles at w = infinity, finite windows "
        f"{finite.min():.0f}..{finite.max():.0f} (geometric mean {math.exp(np.log(finite).mean()):.0f}); softmax "
        f"{psi} layers, width {psi * psi}, {max(1, psi * psi // 64)} heads, 4x MLP; parameters "
        f"{params['screening']:,} vs {params['softmax SDPA']:,}; median of {rounds} round(s), taking turns; "
        "ratio > 1: screening is faster"
    )
    frame["device"] = f"{torch_device}, {dtype}"
    if out:
        from pathlib import Path

        Path(out).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(out) / "bench_screening.csv", index=False)
    return frame
