"""Attention probes against full attention matrices (output_attentions), and their memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.attention import apply_attention
from evalkit.core.requests import PROBE_METRICS, ProbeRequest
from evalkit.models.probe import analytic_max_weight, run_probes
from tests.conftest import make_llama


def full_attentions(model, ids, implementation):
    """Every layer's full (B, H, T, T) weights, the naive way."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        with torch.no_grad():
            return [a.double() for a in model(input_ids=ids, output_attentions=True).attentions]
    finally:
        model.set_attn_implementation(before)


def naive_stats(weights_row: np.ndarray, start: int, end: int, n: int) -> dict:
    w = weights_row[:n]
    best = w[start:end].max()
    return {
        "needle_mass": w[start:end].sum(),
        "max_weight": w.max(),
        "entropy": -(w[w > 0] * np.log(w[w > 0])).sum(),
        "entropy_norm": -(w[w > 0] * np.log(w[w > 0])).sum() / np.log(n),
        "needle_rank": 1 + (w > best).sum(),
        "top1_in_needle": float(start <= w.argmax() < end),
    }


@pytest.mark.parametrize(
    "variant, params",
    [("softmax", {}), ("ssmax", {"s": 0.7}), ("logn", {"train_length": 16}), ("ssmax-bias", {"s": 0.5, "b": 0.3})],
)
def test_probe_matches_output_attentions(variant, params):
    model = make_llama(vocab_size=97, seed=11)  # 4 query heads, 2 KV heads: GQA
    apply_attention(model, variant, **params)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(0, 97, size=(2, 48)))
    rows = (20, 33, 47)
    requests = [ProbeRequest(ids[0].numpy(), rows, (5, 9)), ProbeRequest(ids[1].numpy(), rows, (12, 30))]
    results = run_probes(model, ids, requests)
    implementation = "eager" if variant == "softmax" else "evalkit_reference"
    attentions = full_attentions(model, ids, implementation)  # layers x (B, H, T, T)
    for b, request in enumerate(requests):
        for layer, weights in enumerate(attentions):
            for head in range(4):
                want = {
                    m: np.mean([naive_stats(weights[b, head, r].numpy(), *request.needle, r + 1)[m] for r in rows])
                    for m in PROBE_METRICS
                }
                for metric in PROBE_METRICS:
                    got = results[b].metrics[metric][layer, head]
                    assert abs(got - want[metric]) < 1e-5, (variant, metric, layer, head, got, want[metric])


def test_probed_rows_sum_to_one_and_mass_in_unit_interval():
    model = make_llama(vocab_size=97, seed=12)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 97, size=(1, 64)))
    captured = []

    from evalkit.attention import attention_modules
    from evalkit.models.probe import probing

    def callback(inputs):
        captured.append(inputs.weights(torch.tensor([10, 63])))

    with probing(model, [m for _, m in attention_modules(model)], callback), torch.no_grad():
        model(input_ids=ids)
    for weights in captured:
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5, rtol=0)
        assert (weights[..., 0, 11:] == 0).all()  # row 10 sees keys 0..10 only
    result = run_probes(model, ids, [ProbeRequest(ids[0].numpy(), (63,), (0, 64))])[0]
    np.testing.assert_allclose(result.metrics["needle_mass"], 1.0, atol=1e-5)  # the whole context is the needle
    assert (result.metrics["entropy_norm"] <= 1 + 1e-6).all() and (result.metrics["entropy_norm"] >= 0).all()


def test_probe_memory_grows_linearly(tmp_path):
    """Peak memory of a probed forward at 2x the length is ~2x, not ~4x (no n x n tensor)."""
    import subprocess
    import sys

    script = tmp_path / "peak.py"
    script.write_text(
        "import resource, sys, numpy as np, torch\n"
        "sys.path.insert(0, {!r})\n"
        "from tests.conftest import make_llama\n"
        "from evalkit.models.probe import run_probes\n"
        "from evalkit.core.requests import ProbeRequest\n"
        "torch.set_num_threads(1)\n"
        "n = int(sys.argv[1])\n"
        "model = make_llama(vocab_size=97, max_positions=n, hidden_size=32, intermediate_size=32, "
        "num_attention_heads=2, num_key_value_heads=1, head_dim=16)\n"
        "ids = torch.from_numpy(np.random.default_rng(0).integers(0, 97, size=(1, n)))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "run_probes(model, ids, [ProbeRequest(ids[0].numpy(), (n - 1,), (10, 20))])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n".format(
            str(__import__("pathlib").Path(__file__).parent.parent)
        )
    )

    def peak_kb(n):
        return int(
            subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, check=True).stdout
        )

    small, large = peak_kb(8192), peak_kb(16384)
    # An n x n float32 score matrix alone would be 256 MiB at 8k and 1 GiB at 16k.
    print(f"probe peak memory: {small} KiB at 8k, {large} KiB at 16k")
    assert large < 3.0 * max(small, 1), (small, large)
    assert large < 250_000, large  # KiB: far below one 16k x 16k matrix


def test_analytic_softmax_and_ssmax_max_weight():
    n = np.array([16, 256, 4096, 65536, 1 << 20])
    np.testing.assert_allclose(analytic_max_weight(n, gap=1.0, s=None), np.e / (np.e + n - 1))
    assert analytic_max_weight(n, 1.0, None)[-1] < 1e-5  # softmax fades to zero
    ssmax = analytic_max_weight(n, gap=2.0, s=1.0)  # s * gap > 1
    assert ssmax.min() > 0.9 and np.all(np.diff(ssmax) > 0)  # bounded away from 0, even growing
    np.testing.assert_allclose(analytic_max_weight(n, gap=1.0, s=1.0), n / (2 * n - 1))  # s * gap = 1: tends to 1/2
