"""Perplexity windows, exactly: every token scored once at any stride, lm-eval's rolling windows
reproduced document by document, and a manifest that can rebuild the token stream."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cli
from evalkit.data.corpus import TokenStream
from evalkit.data.windows import document_windows, strided_windows

runner = CliRunner()
APP = cli.register_tasks()


# -- lm-eval's window arithmetic, transcribed ---------------------------------------------------
# From EleutherAI/lm-evaluation-harness v0.4.13, lm_eval/utils.py (get_rolling_token_windows,
# make_disjoint_window), as lm_eval/models/huggingface.py HFLM.loglikelihood_rolling calls them
# (prefix_token = BOS or EOS, max_seq_len = max_length, context_len = 1), and the causal input
# HFLM._loglikelihood_tokens builds: (context + continuation)[-(max_length + 1):][:-1].
def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def make_disjoint_window(pair):
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def lm_eval_calls(token_list, prefix, max_length):
    """(model input ids, scored continuation ids) of each forward lm-eval runs for one document."""
    calls = []
    for context, continuation in map(
        make_disjoint_window, get_rolling_token_windows(token_list, prefix, max_length, 1)
    ):
        calls.append(((context + continuation)[-(max_length + 1) :][:-1], continuation))
    return calls


def evalkit_calls(stream: TokenStream, max_length: int) -> list[list]:
    """The same, per document, from evalkit's windows: a window of T tokens runs its first T - 1."""
    per_doc = [[] for _ in stream.doc_starts]
    for doc, begin, size, first in document_windows(stream, max_length):
        window = stream.tokens[begin : begin + size].tolist()
        per_doc[doc].append((window[:-1], window[first:]))
    return per_doc


def covered(windows, length):
    scored = []
    for begin, first in windows:
        scored.extend(range(begin + first, begin + length))
    return scored


@pytest.mark.parametrize("total", [64, 65, 129, 1000, 1001])
@pytest.mark.parametrize("stride", [1, 7, 32, 63, 64, 65, 100, 5000])
def test_every_position_scored_exactly_once_at_any_stride(total, stride):
    length = 64
    windows = strided_windows(TokenStream("t", np.arange(total), np.array([0])), length, stride)
    assert covered(windows, length) == list(range(1, total))  # each position once, in order
    for begin, first in windows[1:]:
        assert first >= 1 and begin + length <= total
        assert first >= length - min(stride, length - 1)  # at least L - stride tokens of context


@pytest.mark.parametrize("max_length", [1, 2, 3, 16, 64, 100])
def test_lm_eval_mode_windows_equal_lm_evals(max_length):
    rng = np.random.default_rng(max_length)
    docs = [
        rng.integers(1, 50, n).tolist()
        for n in (
            0,
            1,
            2,
            max_length - 1,
            max_length,
            max_length + 1,
            2 * max_length,
            2 * max_length + 1,
            int(rng.integers(1, 400)),
            int(rng.integers(1, 400)),
        )
    ]
    docs = [d for d in docs if d]  # lm-eval scores nothing in an empty document; evalkit gives it no window either
    prefix = 0
    pieces = [[prefix] + d for d in docs]
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    stream = TokenStream("t", np.concatenate([np.asarray(p) for p in pieces]), starts)
    assert evalkit_calls(stream, max_length) == [lm_eval_calls(d, prefix, max_length) for d in docs]


def run_cli(*args):
    result = runner.invoke(APP, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """Five documents of a few hundred characters, some shorter than a window."""
    from evalkit.data.corpus import load_corpus

    folder = tmp_path_factory.mktemp("corpus")
    docs = [d[:n] for d, n in zip(load_corpus().documents[40:45], (900, 60, 700, 20, 1500))]
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path, docs


@pytest.mark.parametrize("stride", [64, 90])  # = L (skipped a token per window before) and > L
def test_stride_at_and_over_the_length_scores_the_whole_stream(
    tiny_checkpoint, tmp_path, tokenizer, small_corpus, stride
):
    out = tmp_path / "run"
    run_cli(
        "run",
        "perplexity",
        "--model",
        tiny_checkpoint,
        "--dataset",
        small_corpus[0],
        "--lengths",
        "64",
        "--stride",
        stride,
        "--out",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    ids = []
    for doc in small_corpus[1]:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    summary = pd.read_csv(out / "summary.csv")
    assert summary.stream_tokens.iloc[0] == len(ids)
    assert summary.tokens.iloc[0] == len(ids) - 1  # every token but the first, once
    frame = pd.read_parquet(out / "results.parquet")
    assert (frame.stride == 63).all()
    # the manifest's fingerprint is the stream rebuilt by hand from its recipe
    stream = json.loads((out / "manifest.json").read_text())["token_stream"]
    assert stream["tokens"] == len(ids)
    assert stream["tokens_sha256"] == hashlib.sha256(np.asarray(ids, "<i8").tobytes()).hexdigest()
    assert stream["corpus"] == str(small_corpus[0]) and "sorted by path" in stream["document_order"]


def test_lm_eval_mode_equals_lm_evals_rolling_loglikelihood(tiny_checkpoint, tmp_path, tokenizer, small_corpus):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lm-eval"
    run_cli(
        "run",
        "perplexity",
        "--model",
        tiny_checkpoint,
        "--dataset",
        small_corpus[0],
        "--lengths",
        "32,64",
        "--match",
        "lm-eval",
        "--out",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    summary = pd.read_csv(out / "summary.csv").set_index("context_length")
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    prefix = tokenizer.eos_token_id  # lm-eval's prefix: BOS, else EOS (the tiny tokenizer has no BOS)
    docs = small_corpus[1]
    for length in (32, 64):
        nll, tokens = 0.0, 0
        for doc in docs:  # lm-eval's loglikelihood_rolling, with plain transformers
            for inputs, continuation in lm_eval_calls(tokenizer.encode(doc), prefix, length):
                with torch.no_grad():
                    logprobs = torch.log_softmax(model(torch.tensor([inputs])).logits[0].float(), -1)  # (T, V)
                picked = logprobs[-len(continuation) :].gather(-1, torch.tensor(continuation)[:, None])
                nll -= float(picked.sum())
                tokens += len(continuation)
        words = sum(len(re.split(r"\s+", d)) for d in docs)  # lm-eval's PerplexityTask.count_words
        row = summary.loc[length]
        assert row.tokens == tokens == sum(len(tokenizer.encode(d)) for d in docs)
        assert row.nll_sum == pytest.approx(nll, rel=1e-5)
        assert row.words == words and row.bytes == sum(len(d.encode()) for d in docs)
        assert row.word_perplexity == pytest.approx(math.exp(nll / words), rel=1e-4)
    manifest = json.loads((out / "manifest.json").read_text())["token_stream"]
    assert (
        manifest["tokens"] == sum(len(tokenizer.encode(d)) + 1 for d in docs)
        and "each document alone" in manifest["joining"]
    )


def test_lm_eval_mode_and_stride_are_exclusive(tiny_checkpoint, tmp_path):
    result = runner.invoke(
        APP,
        [
            "run",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--match",
            "lm-eval",
            "--stride",
            "8",
            "--out",
            str(tmp_path / "x"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 2 and "--stride" in result.output


def test_random_windows_share_no_token_and_runs_without_overlap_keep_their_offsets():
    from evalkit.core.errors import DataError
    from evalkit.data.windows import random_offsets

    stream = TokenStream("s", np.arange(10_000, dtype=np.int64), np.array([0]))
    redrawn = 0
    for seed in range(300):
        offsets = random_offsets(stream, 1024, 8, seed)  # 8 of 1024 in 10,000: a plain draw overlaps most times
        assert len(offsets) == 8 and offsets == sorted(offsets) and offsets[0] >= 0 and offsets[-1] <= 10_000 - 1024
        assert all(b - a >= 1024 for a, b in zip(offsets, offsets[1:])), (seed, offsets)
        plain = sorted(np.random.default_rng([seed, 1024]).choice(10_000 - 1023, size=8, replace=False).tolist())
        disjoint = all(b - a >= 1024 for a, b in zip(plain, plain[1:]))
        if disjoint:
            assert offsets == plain  # a plain draw without overlap is kept as it was
        redrawn += not disjoint
    assert redrawn > 100
    # uniform over placements: the first start's mean matches the disjoint placements' (slack / (count + 1))
    firsts = [random_offsets(stream, 1024, 8, seed)[0] for seed in range(2000)]
    slack = 10_000 - 8 * 1024
    assert abs(np.mean(firsts) - slack / 9) < 4 * np.std(firsts) / np.sqrt(2000)
    assert random_offsets(stream, 1000, 10, 0) == [1000 * i for i in range(10)]  # exactly full
    with pytest.raises(DataError, match="at most --samples 9"):
        random_offsets(stream, 1024, 10, 0)
    assert len(random_offsets(stream, 1024, 12, 0, disjoint=False)) == 12  # timing benches may overlap
