"""Llama 4 text checkpoints through the CLI: perplexity and needle scoring on a tiny random config.

In transformers 5.24 ``Llama4ForCausalLM.get_decoder()`` returns the causal LM itself, whose output
has logits and no ``last_hidden_state``; the adapter must find the body under ``.model``. The
reference is the stock forward's own logits.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import make_llama4
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()


@pytest.fixture(scope="module")
def llama4_checkpoint(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama4")
    make_llama4(len(tokenizer), max_positions=512).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("attention", ["auto", "native"])
def test_llama4_perplexity_matches_stock_forward(llama4_checkpoint, tokenizer, tmp_path, attention):
    from transformers import Llama4ForCausalLM

    from evalkit.data.corpus import load_corpus, token_stream

    out = tmp_path / "run"
    result = runner.invoke(
        APP,
        [
            "run",
            "perplexity",
            "--model",
            str(llama4_checkpoint),
            "--attention",
            attention,
            "--lengths",
            "64,128",
            "--samples",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--dataset",
            "builtin:pydoc-topics",
            "--documents",
            "joined",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    rows = frame[(frame.metric == "mean_nll") & (frame.context_length == 128)]
    assert len(rows) == 2
    stock = Llama4ForCausalLM.from_pretrained(llama4_checkpoint).eval()
    stream = token_stream(load_corpus(), tokenizer)
    for row in rows.itertuples():
        ids = torch.from_numpy(stream.tokens[row.offset : row.offset + 128].astype("int64"))[None]  # (1, 128)
        with torch.inference_mode():
            logits = stock(input_ids=ids).logits[0, :-1].float()  # (127, V)
        reference = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
        assert abs(reference - row.value) < 1e-4


def test_llama4_needle_scores(llama4_checkpoint, tmp_path):
    out = tmp_path / "needle"
    result = runner.invoke(
        APP,
        [
            "run",
            "needle",
            "--model",
            str(llama4_checkpoint),
            "--lengths",
            "96",
            "--depths",
            "0,100",
            "--trials",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    logprobs = frame[frame.metric == "answer_logprob"].value
    assert len(logprobs) == 2 and (logprobs < 0).all() and logprobs.notna().all()
