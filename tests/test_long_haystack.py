"""The field's headline lengths with defaults: 128k and beyond on a model that holds them.

The default haystack reads Python's documentation topics up to 64k and the standard library's
source beyond (``NeedleGridOptions.resolved_dataset``), and at a model's own limit prompt + answer
fit in the length (``haystack.Fit``, RULER's convention).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import make_llama

from evalkit.core.errors import ConfigError
from evalkit.core.task import TaskContext
from evalkit.data import stdlib
from evalkit.data.corpus import PYDOC_TOPICS, PYTHON_STDLIB, load_corpus, separator_id, token_stream
from evalkit.run.evaluate import _check_lengths
from tasks.focus import FocusOptions, FocusTask
from tasks.needle import NeedleOptions, NeedleTask

LIMIT = 131072  # 128k positions


@pytest.mark.parametrize(
    "options, corpus",
    [
        ({}, PYDOC_TOPICS),
        ({"lengths": "1k..64k"}, PYDOC_TOPICS),
        ({"lengths": "1k,128k"}, PYTHON_STDLIB),
        ({"lengths": "1m"}, PYTHON_STDLIB),
        ({"lengths": "128k", "dataset": PYDOC_TOPICS}, PYDOC_TOPICS),  # asked for: kept, and refused if too short
        ({"lengths": "128k", "haystack": "repeat"}, PYDOC_TOPICS),  # one passage repeated: any length
    ],
)
def test_default_haystack_corpus_depends_on_the_longest_length(options, corpus):
    assert NeedleOptions(**options).resolved_dataset() == corpus
    assert FocusOptions(**options).resolved_dataset() == corpus


@pytest.fixture
def small_stdlib(monkeypatch):
    """A cut of the standard library corpus (its first files, about 200 kB: ~150k tokens on the tiny
    tokenizer), so 128k haystacks build in seconds; the whole corpus is the slow test's."""
    root = stdlib.stdlib_root()
    files, size = [], 0
    for name in stdlib.stdlib_files():
        files.append(name)
        size += (root / name).stat().st_size
        if size > 200_000:
            break
    monkeypatch.setattr(stdlib, "stdlib_files", lambda root=None: files)
    return files


@pytest.fixture(scope="module")
def checkpoint_128k(tokenizer, tmp_path_factory):
    """A tiny random Llama (2 layers, width 32) with 131,072 positions."""
    folder = tmp_path_factory.mktemp("llama-128k")
    make_llama(len(tokenizer), max_positions=LIMIT, hidden_size=32, intermediate_size=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_128k_needle_and_focus_samples_on_a_128k_model(checkpoint_128k, small_stdlib):
    from evalkit.models.loading import LoadOptions, load_model

    loaded = load_model(str(checkpoint_128k), LoadOptions(device="cpu"), log=lambda *a: None)
    assert loaded.max_positions == LIMIT
    context = TaskContext(loaded.tokenizer, loaded.max_positions, False, 1234)
    stream = token_stream(load_corpus(PYTHON_STDLIB), loaded.tokenizer)
    assert len(stream.tokens) > LIMIT

    task = NeedleTask(NeedleOptions(lengths="4k,128k", depths="50", trials="1"), context)
    samples = task.samples()
    _check_lengths(samples, loaded.max_positions, False)  # no extrapolation, no flag
    short, long = samples
    answer = len(long.request.answer)
    assert len(short.request.prompt) == 4096  # inside the limit a length is the prompt's
    assert len(long.request.prompt) + answer == LIMIT and long.request.positions == LIMIT - 1
    assert long.keys["context_length"] == LIMIT and long.meta["prompt_tokens"] == LIMIT - answer
    # the haystack is the standard library's token stream from the recorded offset (separators read as newlines)
    assert long.meta["haystack_source"] == PYTHON_STDLIB
    newline = loaded.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    ring = np.where(stream.tokens == separator_id(loaded.tokenizer), newline, stream.tokens)
    offset = long.meta["haystack_offset"]
    assert np.array_equal(long.request.prompt[:1000], np.take(ring, np.arange(offset, offset + 1000), mode="wrap"))
    manifest = task.provenance()
    assert manifest["haystack_corpus"]["corpus"] == PYTHON_STDLIB
    assert manifest["haystack_corpus"]["tokens"] == len(stream.tokens)
    assert manifest["context_lengths"]["prompt_plus_answer_within"] == {
        str(LIMIT): {"prompt_tokens": [LIMIT - answer], "rule": "RULER: prompt + answer <= L"}
    }

    generate = NeedleTask(NeedleOptions(lengths="128k", depths="50", trials="1", scoring="generate"), context)
    (sample,) = generate.samples()  # room for the generation budget: the answer's tokens + 8
    assert len(sample.request.prompt) == LIMIT - answer - 8 and sample.request.positions == LIMIT - 1

    last = FocusTask(FocusOptions(lengths="128k", depths="50", trials="1"), context).samples()
    assert len(last[0].request.tokens) == LIMIT  # the last-token probe runs on the prompt alone: all L tokens
    rows = FocusTask(FocusOptions(lengths="128k", depths="50", trials="1", query="answer"), context).samples()
    assert len(rows[0].request.tokens) == LIMIT  # prompt + answer = L
    for probes in (last, rows):
        _check_lengths(probes, loaded.max_positions, False)
    # one past the limit is extrapolation: never fitted, refused without the flag
    over = NeedleTask(NeedleOptions(lengths=str(LIMIT + 1), depths="50", trials="1"), context).samples()
    assert len(over[0].request.prompt) == LIMIT + 1
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings"):
        _check_lengths(over, loaded.max_positions, False)


@pytest.mark.slow
def test_128k_needle_run_with_defaults(checkpoint_128k, tmp_path):
    """The whole default path: the standard library tokenized in full (about 8.5M tokens on the tiny
    tokenizer) and one forward pass of 131,067 tokens, about 130 s of one CPU core (measured 0.6 /
    2.4 / 8.9 s at 8k / 16k / 32k: quadratic). Fast check of the same samples and length rules:
    test_128k_needle_and_focus_samples_on_a_128k_model."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    import cli

    args = ["run", "needle", "--model", str(checkpoint_128k), "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli.register_tasks(), [*args, "--lengths", "128k", "--depths", "50", "--trials", "1"])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "results.parquet")
    assert set(rows.context_length) == {LIMIT} and set(rows.haystack_source) == {PYTHON_STDLIB}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["haystack_corpus"]["corpus"] == PYTHON_STDLIB
    assert str(LIMIT) in manifest["context_lengths"]["prompt_plus_answer_within"]


@pytest.mark.slow
def test_million_token_haystacks_from_the_default_sources(smollm2_tokenizer):
    """1M-token needle prompts from the default corpus on SmolLM2's tokenizer (3.26M tokens of
    standard library source); no model: a 1M prompt is the haystack builder's job. Fast check of
    the corpus rule: test_default_haystack_corpus_depends_on_the_longest_length."""
    started = time.perf_counter()
    context = TaskContext(smollm2_tokenizer, None, True, 1234)
    task = NeedleTask(NeedleOptions(lengths="1m", depths="10,90", trials="1"), context)
    samples = task.samples()
    assert [len(s.request.prompt) for s in samples] == [2**20, 2**20]
    assert {s.meta["haystack_source"] for s in samples} == {PYTHON_STDLIB}
    assert task.provenance()["haystack_corpus"]["tokens"] > 3_000_000
    print(f"two 1M-token samples in {time.perf_counter() - started:.1f} s (tokenizing the corpus included)")
