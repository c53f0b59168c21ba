"""The bench commands run on a tiny model and produce their tables (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
from typer.testing import CliRunner

import cli
from evalkit.bench.timing import forward_flops_per_token, measure_peak_tflops

runner = CliRunner()
APP = cli.register_tasks()


def test_bench_perplexity_table(tiny_checkpoint, tmp_path):
    result = runner.invoke(
        APP,
        [
            "bench",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--lengths",
            "64",
            "--device",
            "cpu",
            "--seconds",
            "0.3",
            "--attention",
            "softmax,ssmax",
            "--ssmax-s",
            "0.5",
            "--peak-tflops",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bench.csv")
    assert list(table.attention[:3]) == ["softmax", "ssmax", "plain transformers (softmax, labels=, batch 1)"]
    assert (table.tokens_per_s > 0).all() and (table.vs_softmax > 0).all()
    assert table.vs_softmax.iloc[0] == 1 and 0 < table.mfu.iloc[0] < 1 and (table.peak_tflops == 1).all()
    # a window of T tokens runs T through the model and scores the T-1 that have a left context
    assert list(table.tokens_computed[:3]) == [32 * 64, 32 * 64, 64] and list(table.tokens_scored[:3]) == [
        32 * 63,
        32 * 63,
        63,
    ]
    assert (table.tokens_computed >= table.tokens_scored).all()
    assert table.timing.str.startswith("median of 3 rounds").all()
    if importlib.util.find_spec("lm_eval"):  # the peer takes its turns too, quietly
        assert table.attention.iloc[3].startswith("lm-eval") and table.tokens_scored.iloc[3] > 0
        assert "it/s" not in result.output and "Loading" not in result.output


def test_bench_perplexity_measures_the_peak(tiny_checkpoint, tmp_path):
    result = runner.invoke(
        APP,
        [
            "bench",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--lengths",
            "32",
            "--device",
            "cpu",
            "--seconds",
            "0.05",
            "--batch-tokens",
            "64",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bench.csv")
    assert table.peak_source.str.startswith("measured").all() and (table.peak_tflops > 0).all()
    assert np.isfinite(table.mfu).all() and (table.mfu > 0).all()


def test_matmul_probe_is_positive_and_finite():
    import torch

    for dtype in (torch.float32, torch.bfloat16):
        peak = measure_peak_tflops("cpu", dtype, size=256, repeats=2)
        assert math.isfinite(peak) and peak > 0


def test_bench_needle_table(tiny_checkpoint, tmp_path):
    result = runner.invoke(
        APP,
        [
            "bench",
            "needle",
            "--model",
            str(tiny_checkpoint),
            "--lengths",
            "192",
            "--depths",
            "50",
            "--trials",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bench_needle.csv")
    assert list(table.context_length) == ["192", "all"] and list(table.verdicts_agree) == ["2/2", "2/2"]
    assert (table.shared_vs_generate > 0).all() and 0 < table.tokens_computed_shared.iloc[0] <= 1
    # the shared walk computes at most every prompt token; with one length the grid row holds the same prompts
    assert (table.prompt_tokens >= table.prompt_tokens_computed_shared).all() and (
        table.prompt_tokens_computed_shared > 0
    ).all()
    assert table.prompt_tokens.iloc[1] == table.prompt_tokens.iloc[0]
    assert table.timing.str.startswith("median of 3 rounds").all()


def test_flops_per_token_counts_matmuls():
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    # per layer: q,o 2*64*64 + k,v 2*64*32, MLP 3*64*128, attention 2*64*(L+1)/2; head 64*100; x2 for multiply-add
    L = 15
    want = 2 * (2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64 * (L + 1) / 2) + 64 * 100)
    assert forward_flops_per_token(config, L) == want


def test_rounds_interleave_every_mode_and_take_the_median():
    import torch

    from evalkit.bench.timing import Mode, run_rounds

    log = []
    modes = [
        Mode(name, lambda name=name: log.append(name), 1, 2, 1, setup=lambda name=name: log.append(f"setup {name}"))
        for name in ("evalkit", "peer")
    ]
    per_call = run_rounds(modes, torch.device("cpu"), seconds=0.0, rounds=3)
    calls = [entry for entry in log if not entry.startswith("setup")]
    assert calls == ["evalkit", "peer"] * 4  # one warm-up each, then each round gives both a turn
    assert log[:2] == ["setup evalkit", "evalkit"]  # a mode is set up (variant activated) before its own calls
    assert set(per_call) == {"evalkit", "peer"} and all(0 < s < 1 for s in per_call.values())


def test_quiet_peer_silences_bars_and_logs_then_restores(capfd):
    import logging
    import sys

    from tqdm import tqdm

    from evalkit.bench.timing import quiet_peer

    logger = logging.getLogger("lm_eval")
    before = logger.level
    with quiet_peer():
        for _ in tqdm(range(3), disable=False):  # what lm-eval 0.4.13 passes to its inner loop
            pass
        print("bar-free", file=sys.stderr)
        assert logger.level == logging.ERROR
    assert logger.level == before
    assert capfd.readouterr().err == ""
