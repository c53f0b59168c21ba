"""Multiscreen (Nakanishi 2026, "Screening Is Enough"), written from the paper's formulas.

A layer adds the outputs of its tiles to the residual stream, with no MLP and no normalization
layer. A tile projects x to q, k (d_K) and v, g (d_V); screens (``screen.py``): unit q, k, v,
MiPE on q and k, trim-and-square relevance, the cosine softmask, the unnormalized sum, TanhNorm;
gates ``u * tanh(SiLU(g))`` and projects back, scaled by exp(s_O). Embeddings are unit rows,
tied: the input is exp(s_E) E[token], the logits exp(s_F) x E^T.

Learned per tile: the window w = exp(s_w) + 1 and the acceptance width r = exp(s_r) + 1 (accept
cosine similarity above 1 - 1/r). MiPE rotates the first two coordinates of q and k by
pi i gamma(w) / w at position i, gamma(w) = (cos(pi w / w_th) + 1) / 2 below w_th and 0 above.
At inference, tiles listed in ``config.infinite_tiles`` (those whose window exceeds the training
length, ``inference_windows``) use w = infinity: mask 1 on every earlier key, no rotation.

Finite-window tiles are grouped by band (powers of two of ceil(w)) and computed banded, so no
tile builds an n x n matrix and a tile of window w costs O(n w); w = infinity tiles run exact in
query chunks, linear in memory.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from evalkit.models.multiscreen.config import MultiscreenConfig
from evalkit.models.multiscreen.screen import (
    SCORE_BUDGET,
    acceptance,
    mipe,
    screen_banded,
    screen_full,
    tanh_norm,
    window,
)


def mipe_rate(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """pi gamma(w) / w radians per position; gamma(w) = (cos(pi w / w_th) + 1) / 2 for w < w_th, else 0."""
    gamma = torch.where(w < threshold, 0.5 * (torch.cos(math.pi * w / threshold) + 1.0), torch.zeros_like(w))
    return math.pi * gamma / w


SHORT = 64  # up to this length every finite tile runs in one block: a constant, cheaper than many small ops


def band_groups(w: torch.Tensor, finite: list[int], length: int) -> list[list[int]]:
    """Finite tiles grouped by the power of two at or above their band min(ceil(w), length), so a
    group's shared band is at most twice any member's: O(n w) per tile up to a factor 2. Sequences
    of at most ``SHORT`` tokens (training batches) take every finite tile in one group."""
    if length <= SHORT:
        return [finite] if finite else []
    groups: dict[int, list[int]] = {}
    for tile in finite:
        band = min(math.ceil(float(w[tile])), length)
        groups.setdefault(1 << max(0, band - 1).bit_length(), []).append(tile)
    return [groups[key] for key in sorted(groups)]


class ScreeningLayer(nn.Module):
    """One layer: ``tiles`` gated screening tiles, their outputs summed."""

    def __init__(self, config: MultiscreenConfig):
        super().__init__()
        c = config
        self.tiles, self.key_dim, self.value_dim, self.threshold = c.tiles, c.key_dim, c.value_dim, c.mipe_threshold
        self.budget = SCORE_BUDGET  # score elements alive at once (Multiscreen.set_score_budget)
        self.q = nn.Linear(c.width, c.tiles * c.key_dim, bias=False)
        self.k = nn.Linear(c.width, c.tiles * c.key_dim, bias=False)
        self.v = nn.Linear(c.width, c.tiles * c.value_dim, bias=False)
        self.g = nn.Linear(c.width, c.tiles * c.value_dim, bias=False)
        self.o = nn.Linear(c.tiles * c.value_dim, c.width, bias=False)
        # The paper's initial values: windows 2 .. w_th + 1 spaced in log, r = 2, s_O = log(1/sqrt(N_H N_L)).
        self.s_w = nn.Parameter(torch.linspace(0.0, math.log(c.mipe_threshold), c.tiles))
        self.s_r = nn.Parameter(torch.zeros(c.tiles))
        self.s_o = nn.Parameter(torch.full((c.tiles,), math.log(1.0 / math.sqrt(c.tiles * c.layers))))
        s = c.init_scale
        nn.init.normal_(self.q.weight, std=s / math.sqrt(c.key_dim))
        nn.init.normal_(self.k.weight, std=s / math.sqrt(c.key_dim))
        nn.init.normal_(self.v.weight, std=s / math.sqrt(c.value_dim))
        nn.init.normal_(self.g.weight, std=s)
        nn.init.normal_(self.o.weight, std=s / math.sqrt(c.width))

    def project(self, x: torch.Tensor, offset: int, infinite: tuple[int, ...]):
        """Unit q, k (after MiPE) and v, and the gate g: (B, H, T, dK) x2, (B, H, T, dV), (B, T, H, dV)."""
        B, T, _ = x.shape
        H = self.tiles
        q = self.q(x).view(B, T, H, self.key_dim).transpose(1, 2)  # (B, H, T, dK)
        k = self.k(x).view(B, T, H, self.key_dim).transpose(1, 2)  # (B, H, T, dK)
        v = self.v(x).view(B, T, H, self.value_dim).transpose(1, 2)  # (B, H, T, dV)
        g = self.g(x).view(B, T, H, self.value_dim)  # (B, T, H, dV)
        q, k, v = (nn.functional.normalize(t, dim=-1) for t in (q, k, v))
        rate = mipe_rate(window(self.s_w), self.threshold)  # (H,)
        if infinite:
            keep = torch.ones(H, dtype=rate.dtype, device=rate.device)
            keep[list(infinite)] = 0.0  # w = infinity: gamma = 0, no rotation
            rate = rate * keep
        return mipe(q, rate, offset), mipe(k, rate, offset), v, g

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, infinite: tuple[int, ...] = (), offset: int = 0
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v, g = self.project(x, offset, infinite)
        w, r = window(self.s_w), acceptance(self.s_r)  # (H,), (H,)
        h = q.new_zeros(B, self.tiles, T, self.value_dim)  # (B, H, T, dV)
        finite = [t for t in range(self.tiles) if t not in infinite]
        for group in band_groups(w.detach(), finite, T):
            if len(group) == self.tiles:  # every tile in one group: no gather, no scatter
                h = screen_banded(q, k, v, w, r, key_mask, self.budget)  # (B, H, T, dV)
                continue
            idx = torch.tensor(group, device=x.device)
            part = screen_banded(
                q[:, idx], k[:, idx], v[:, idx], w[idx], r[idx], key_mask, self.budget
            )  # (B, h, T, dV)
            h = h.index_copy(1, idx, part)
        if infinite:
            idx = torch.tensor(sorted(infinite), device=x.device)
            h = h.index_copy(1, idx, screen_full(q[:, idx], k[:, idx], v[:, idx], r[idx], key_mask, self.budget))
        u = tanh_norm(h).transpose(1, 2)  # (B, T, H, dV)
        gated = u * torch.tanh(nn.functional.silu(g)) * torch.exp(self.s_o)[:, None]  # (B, T, H, dV)
        return self.o(gated.reshape(B, T, self.tiles * self.value_dim))  # (B, T, E)


class Multiscreen(nn.Module):
    """``forward(input_ids (B, T), attention_mask=None) -> logits (B, T, V)``.

    ``attention_mask`` (B, T), 1 for real tokens: padded keys are screened out, so a left-padded
    row gives its real tokens the logits they have alone (positions enter only as differences).
    """

    def __init__(self, config: MultiscreenConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Parameter(torch.empty(config.vocab_size, config.width))
        nn.init.normal_(self.embed, std=config.init_scale / math.sqrt(config.width))
        self.s_e = nn.Parameter(torch.tensor(0.0))
        self.s_f = nn.Parameter(torch.tensor(math.log(math.sqrt(config.width))))
        self.layers = nn.ModuleList(ScreeningLayer(config) for _ in range(config.layers))
        self.tokenizer = None  # set by load_checkpoint when the folder has one

    # what evalkit's torch backend reads
    max_positions = None  # screening has no position table: any length runs

    @property
    def training_length(self) -> int:
        return self.config.training_length

    def set_score_budget(self, elements: int) -> Multiscreen:
        """Score elements alive at once per tile group (memory, not the result): larger on a GPU,
        where fewer, bigger chunks keep kernel launches from dominating."""
        for layer in self.layers:
            layer.budget = int(elements)
        return self

    def infinite(self, layer: int) -> tuple[int, ...]:
        tiles = self.config.infinite_tiles
        return () if tiles is None else tuple(tiles[layer])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, offset: int = 0
    ) -> torch.Tensor:
        return self.logits(self.hidden(input_ids, attention_mask, offset))

    def hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, offset: int = 0
    ) -> torch.Tensor:
        """The residual stream after the last layer: (B, T, E)."""
        table = nn.functional.normalize(self.embed, dim=-1)  # (V, E): unit rows
        x = table[input_ids] * torch.exp(self.s_e)  # (B, T, E)
        for index, layer in enumerate(self.layers):
            x = x + layer(x, attention_mask, self.infinite(index), offset)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        table = nn.functional.normalize(self.embed, dim=-1)  # (V, E)
        return torch.exp(self.s_f) * (x @ table.T)  # (B, T, V)

    def evalkit_probe(self, input_ids: torch.Tensor, request):
        """Focus statistics per (layer, tile) for evalkit's focus task (``probe.py``)."""
        from evalkit.models.multiscreen.probe import probe

        return probe(self, input_ids, request)

    # -- the inference rule ---------------------------------------------------------------------
    def learned_windows(self) -> torch.Tensor:
        """w = exp(s_w) + 1 per (layer, tile): (L, H)."""
        return torch.stack([window(layer.s_w.detach()) for layer in self.layers]).float().cpu()

    def inference_windows(self) -> MultiscreenConfig:
        """The config with ``infinite_tiles`` set by the paper's rule: learned w > training length."""
        over = self.learned_windows() > self.config.training_length  # (L, H)
        tiles = tuple(tuple(int(t) for t in torch.nonzero(row).flatten()) for row in over)
        return replace(self.config, infinite_tiles=tiles)

    def freeze_windows(self) -> Multiscreen:
        """Apply the inference rule in place (training leaves ``infinite_tiles`` unset)."""
        self.config = self.inference_windows()
        return self

    def infinite_share(self) -> float:
        """The share of tiles at w = infinity (what the paper says drives its speed)."""
        tiles = self.config.infinite_tiles or ()
        return sum(len(t) for t in tiles) / (self.config.layers * self.config.tiles)
