"""Multiscreen against the paper's formulas written out again, slowly, in float64 numpy loops.

The reference below reads only the state dict and the config: no code of evalkit.models.multiscreen
computes any of its numbers. The model must match it to float rounding in float64, with left
padding, at lengths well past every finite window, with tiles at w = infinity.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evalkit.models.multiscreen import Multiscreen, MultiscreenConfig, load_checkpoint, save_checkpoint
from evalkit.models.multiscreen.screen import SCORE_BUDGET, screen_banded


def reference_logits(model: Multiscreen, ids: list[int]) -> np.ndarray:
    """Logits (T, V) of one unpadded sequence, by the formulas in design.md, one (i, j) at a time."""
    c = model.config
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    table = p["embed"] / np.linalg.norm(p["embed"], axis=1, keepdims=True)
    x = table[ids] * math.exp(p["s_e"])  # (T, E)
    T = len(ids)
    for layer in range(c.layers):
        infinite = set(c.infinite_tiles[layer]) if c.infinite_tiles else set()
        total = np.zeros_like(x)
        for t in range(c.tiles):
            kd, vd = slice(t * c.key_dim, (t + 1) * c.key_dim), slice(t * c.value_dim, (t + 1) * c.value_dim)
            q = x @ p[f"layers.{layer}.q.weight"][kd].T
            k = x @ p[f"layers.{layer}.k.weight"][kd].T
            v = x @ p[f"layers.{layer}.v.weight"][vd].T
            g = x @ p[f"layers.{layer}.g.weight"][vd].T
            q, k, v = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (q, k, v))
            w = math.exp(p[f"layers.{layer}.s_w"][t]) + 1
            r = math.exp(p[f"layers.{layer}.s_r"][t]) + 1
            gamma = (math.cos(math.pi * w / c.mipe_threshold) + 1) / 2 if w < c.mipe_threshold else 0.0
            theta = 0.0 if t in infinite else math.pi * gamma / w
            for i in range(T):
                a = theta * i
                rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
                q[i, :2], k[i, :2] = rot @ q[i, :2], rot @ k[i, :2]
            u = np.zeros((T, c.value_dim))
            for i in range(T):
                h = np.zeros(c.value_dim)
                for j in range(i + 1):
                    s = float(q[i] @ k[j])
                    alpha = max(1 - r * (1 - s), 0.0) ** 2
                    if t in infinite:
                        m = 1.0
                    else:
                        m = (math.cos(math.pi * (j - i) / w) + 1) / 2 if i - j < w else 0.0
                    h += alpha * m * v[j]
                n = np.linalg.norm(h)
                u[i] = h * math.tanh(n) / n if n > 0 else 0.0
            silu = g / (1 + np.exp(-g))
            gated = u * np.tanh(silu) * math.exp(p[f"layers.{layer}.s_o"][t])
            total += gated @ p[f"layers.{layer}.o.weight"][:, vd].T
        x = x + total
    return math.exp(p["s_f"]) * x @ table.T


def tiny(seed: int = 0, **changes) -> Multiscreen:
    """A small model with windows 2..~10, random r around 2 and one w = infinity tile per layer."""
    fields = dict(vocab_size=37, width=12, layers=2, tiles=4, key_dim=4, value_dim=6, mipe_threshold=9.0)
    fields.update(changes)
    torch.manual_seed(seed)
    model = Multiscreen(MultiscreenConfig(training_length=8, **fields))
    with torch.no_grad():
        for layer in model.layers:
            layer.s_w.add_(torch.rand_like(layer.s_w) * 0.6)  # non-integer windows, the last one past 8
            layer.s_r.copy_(torch.randn_like(layer.s_r) * 0.7)
            layer.s_o.add_(1.5)  # tiles that matter against the embedding
        model.s_e.fill_(0.3)
    return model.freeze_windows()


def test_model_matches_float64_reference_past_the_windows():
    model = tiny().double()
    assert all(len(t) >= 1 for t in model.config.infinite_tiles)  # the rule put a tile at w = infinity
    assert model.learned_windows().max() > 8 and model.learned_windows().min() < 3
    ids = torch.randint(0, 37, (2, 41), generator=torch.Generator().manual_seed(1))
    got = model(ids).detach().numpy()
    for row in range(2):
        want = reference_logits(model, ids[row].tolist())
        np.testing.assert_allclose(got[row], want, rtol=0, atol=1e-11)
    # float32 within float32 rounding of the same function
    got32 = tiny().float()(ids).detach().double().numpy()
    np.testing.assert_allclose(got32[0], reference_logits(model, ids[0].tolist()), rtol=0, atol=2e-5)


def test_left_padding_and_the_key_mask():
    model = tiny(seed=3).double()
    lengths = [30, 19]
    rows = [torch.randint(2, 37, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, T - len(row) :], mask[b, T - len(row) :] = row, 1  # left padding
    got = model(ids, attention_mask=mask).detach().numpy()
    for b, row in enumerate(rows):
        np.testing.assert_allclose(got[b, T - len(row) :], reference_logits(model, row.tolist()), atol=1e-11)
    # right padding needs no mask: causality keeps the real prefix untouched
    right = model(torch.cat([rows[1], torch.zeros(11, dtype=torch.long)])[None]).detach().numpy()
    np.testing.assert_allclose(right[0, :19], reference_logits(model, rows[1].tolist()), atol=1e-11)


def test_banded_blocks_equal_one_block():
    """Many blocks (T = 200 with a band of 9) equal the same screening done as one block."""
    g = torch.Generator().manual_seed(0)
    q, k = (
        torch.nn.functional.normalize(torch.randn(1, 3, 200, 4, generator=g, dtype=torch.float64), dim=-1) for _ in "qk"
    )
    v = torch.nn.functional.normalize(torch.randn(1, 3, 200, 5, generator=g, dtype=torch.float64), dim=-1)
    w = torch.tensor([2.5, 6.0, 8.7], dtype=torch.float64)
    r = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)
    small = screen_banded(q, k, v, w, r, budget=1)  # one block at a time
    large = screen_banded(q, k, v, w, r, budget=1 << 30)
    torch.testing.assert_close(small, large, rtol=0, atol=1e-13)
    # and equal a dense computation (fine at this size)
    i = torch.arange(200)[:, None]
    d = (i - i.T).double()
    m = torch.where((d >= 0) & (d < w[:, None, None]), 0.5 * (torch.cos(math.pi * d / w[:, None, None]) + 1), 0.0)
    alpha = torch.clamp(1 - r[:, None, None] * (1 - q @ k.transpose(-1, -2)), min=0) ** 2
    torch.testing.assert_close(small, (alpha * m) @ v, rtol=0, atol=1e-13)


class _Largest(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("infinite", [False, True])
def test_no_tile_builds_an_n_by_n_matrix(infinite):
    """At n = 8192 no op makes a tensor larger than the score budget, n^2 / 16 elements: finite tiles
    are banded, w = infinity tiles run in query chunks (their memory is linear in n, their time is not)."""
    model = tiny(seed=2, tiles=2, layers=1, vocab_size=11)
    model.config = model.config.__class__(**{**model.config.__dict__, "infinite_tiles": ((1,),) if infinite else ((),)})
    n = 8192
    ids = torch.randint(0, 11, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), _Largest() as probe:
        model(ids)
    assert SCORE_BUDGET <= n * n / 16
    assert probe.largest <= SCORE_BUDGET, probe.largest
    if not infinite:
        assert probe.largest < 64 * n  # banded: the band (at most 16 keys here) times n, nothing quadratic


def test_gradients_reach_every_learned_scale():
    model = Multiscreen(
        MultiscreenConfig(
            vocab_size=20, width=9, layers=2, tiles=3, key_dim=4, value_dim=4, mipe_threshold=6.0, training_length=16
        )
    )
    ids = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, 20), ids[:, 1:].reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initial_values_are_the_papers():
    c = MultiscreenConfig.from_psi(4, vocab_size=10, training_length=64)
    model = Multiscreen(c)
    assert (c.width, c.layers, c.tiles) == (16, 4, 4)
    torch.testing.assert_close(model.learned_windows()[0], torch.exp(torch.linspace(0, math.log(256), 4)) + 1)
    assert float(model.layers[0].s_r[0].detach()) == 0.0 and float(model.s_e.detach()) == 0.0
    assert float(model.layers[1].s_o[0].detach()) == pytest.approx(math.log(1 / math.sqrt(16)))
    assert float(model.s_f.detach()) == pytest.approx(math.log(4.0))
    assert model.freeze_windows().config.infinite_tiles == ((3,),) * 4  # w = 257 > 64: infinite


def test_checkpoint_round_trip(tmp_path):
    from evalkit.reference.tokenizer import char_ids, make_char_tokenizer

    model = tiny(seed=4)
    save_checkpoint(model, tmp_path / "ms", tokenizer=make_char_tokenizer())
    record = json.loads((tmp_path / "ms" / "config.json").read_text())
    assert record["model_type"] == "multiscreen" and record["training_length"] == 8
    assert record["infinite_tiles"] == [list(t) for t in model.config.infinite_tiles]
    loaded = load_checkpoint(tmp_path / "ms", "cpu", torch.float32)
    ids = torch.randint(0, 37, (1, 25))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert loaded.training_length == 8 and loaded.max_positions is None
    assert loaded.tokenizer("K=12\n")["input_ids"] == char_ids("K=12\n")


def test_port_folder_loads_with_its_names(tmp_path):
    """A folder in the community transformers port's layout (config keys and tensor names) loads."""
    from safetensors.torch import save_file

    model = tiny(seed=5)
    names = {"embed": "multiscreen.embed.weight", "s_e": "multiscreen.s_E", "s_f": "multiscreen.s_F"}
    tensors = {}
    for name, t in model.state_dict().items():
        if name in names:
            tensors[names[name]] = t
        else:
            _, layer, part, *rest = name.split(".")
            port = {"s_w": "sw", "s_r": "sr", "s_o": "sO"}.get(part, f"{part}_proj.weight")
            tensors[f"multiscreen.layers.{layer}.block.{port}"] = t
    (tmp_path / "port").mkdir()
    save_file(tensors, str(tmp_path / "port" / "model.safetensors"))
    c = model.config
    (tmp_path / "port" / "config.json").write_text(
        json.dumps(
            {
                "model_type": "multiscreen",
                "vocab_size": c.vocab_size,
                "hidden_size": c.width,
                "num_hidden_layers": c.layers,
                "num_attention_heads": c.tiles,
                "key_dim": c.key_dim,
                "value_dim": c.value_dim,
                "mipe_threshold": c.mipe_threshold,
                "max_position_embeddings": 8,
                "mipe_position_mode": "paper_absolute",
                "tie_word_embeddings": True,
            }
        )
    )
    loaded = load_checkpoint(tmp_path / "port", "cpu")
    assert loaded.config.infinite_tiles == model.config.infinite_tiles
    ids = torch.randint(0, 37, (1, 20))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_refuses_pickled_weights(tmp_path):
    from evalkit.core.errors import ConfigError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "multiscreen"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="pickled"):
        load_checkpoint(tmp_path)


def test_probe_counts_what_each_tile_accepts():
    """Layer 0's probe against alpha m computed here from the embedding and the formulas."""
    from evalkit.core.requests import ProbeRequest

    model = tiny(seed=6).double()
    ids = torch.randint(0, 37, (1, 30), generator=torch.Generator().manual_seed(2))
    request = ProbeRequest(ids[0].numpy(), (29, 25), (10, 14), None)
    result = model.evalkit_probe(ids, request)
    assert result.layers == (0, 1) and result.metrics["accepted_keys"].shape == (2, 4)
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    table = p["embed"] / np.linalg.norm(p["embed"], axis=1, keepdims=True)
    x = table[ids[0].numpy()] * math.exp(p["s_e"])  # (T, E): layer 0's input
    c = model.config
    for t in range(4):
        kd = slice(t * c.key_dim, (t + 1) * c.key_dim)
        q, k = x @ p["layers.0.q.weight"][kd].T, x @ p["layers.0.k.weight"][kd].T
        q, k = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (q, k))
        w, r = math.exp(p["layers.0.s_w"][t]) + 1, math.exp(p["layers.0.s_r"][t]) + 1
        infinite = t in c.infinite_tiles[0]
        theta = 0.0 if infinite else math.pi * ((math.cos(math.pi * w / 9.0) + 1) / 2 if w < 9.0 else 0.0) / w
        counts, shares = [], []
        for i in (29, 25):
            weights = []
            for j in range(i + 1):
                a = theta * (j - i)  # R(theta i) q . R(theta j) k = q . R(theta (j - i)) k
                s = q[i, 0] * (math.cos(a) * k[j, 0] - math.sin(a) * k[j, 1])
                s += q[i, 1] * (math.sin(a) * k[j, 0] + math.cos(a) * k[j, 1]) + q[i, 2:] @ k[j, 2:]
                m = 1.0 if infinite else ((math.cos(math.pi * (j - i) / w) + 1) / 2 if i - j < w else 0.0)
                weights.append(max(1 - r * (1 - s), 0.0) ** 2 * m)
            weights = np.array(weights)
            counts.append((weights > 0).sum())
            shares.append(weights[10:14].sum() / weights.sum() if weights.sum() > 0 else 0.0)
        assert result.metrics["accepted_keys"][0, t] == pytest.approx(np.mean(counts))
        assert result.metrics["needle_mass"][0, t] == pytest.approx(np.mean(shares), abs=1e-12)
