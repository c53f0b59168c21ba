"""The bench commands run on a tiny model and produce their tables (no timing assertions)."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

import cli
from evalkit.bench import forward_flops_per_token

runner = CliRunner()
APP = cli.register_tasks()


def test_bench_perplexity_table(tiny_checkpoint, tmp_path):
    result = runner.invoke(APP, ["bench", "perplexity", "--model", str(tiny_checkpoint), "--lengths", "64", "--device", "cpu",
                                 "--seconds", "0.3", "--attention", "softmax,ssmax", "--ssmax-s", "0.5", "--peak-tflops", "1",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bench.csv")
    assert list(table.attention[:2]) == ["softmax", "ssmax"] and (table.tokens_per_s > 0).all()
    assert table.vs_softmax.iloc[0] == 1 and 0 < table.mfu.iloc[0] < 1


def test_bench_needle_table(tiny_checkpoint, tmp_path):
    result = runner.invoke(APP, ["bench", "needle", "--model", str(tiny_checkpoint), "--lengths", "192", "--depths", "50",
                                 "--trials", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bench_needle.csv")
    assert list(table.context_length) == ["192", "all"] and list(table.verdicts_agree) == ["2/2", "2/2"]
    assert (table.shared_vs_generate > 0).all() and 0 < table.tokens_computed_shared.iloc[0] <= 1


def test_flops_per_token_counts_matmuls():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    # per layer: q,o 2*64*64 + k,v 2*64*32, MLP 3*64*128, attention 2*64*(L+1)/2; head 64*100; x2 for multiply-add
    L = 15
    want = 2 * (2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64 * (L + 1) / 2) + 64 * 100)
    assert forward_flops_per_token(config, L) == want
