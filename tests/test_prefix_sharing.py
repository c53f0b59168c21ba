"""Prefix sharing: needle prompts of one trial scored on one KV cache give what independent passes give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cli
from evalkit.attention import apply_attention
from evalkit.backends.transformers import TransformersBackend
from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from evalkit.data.corpus import load_corpus, token_stream
from evalkit.data.haystack import HaystackOptions, build_samples
from evalkit.models import prefix_cost
from evalkit.models.loading import LoadedModel, ModelSource
from evalkit.models.prefix import common_prefix, lexicographic_order, shared_runs, tokens_to_compute
from tests.conftest import make_llama

# transformers 5.24 deprecates past_key_values= (removed in 5.40): the shared-cache path must not use it
pytestmark = pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")


def test_work_is_the_number_of_distinct_prefixes():
    rng = np.random.default_rng(0)
    trunk = rng.integers(0, 5, 40)
    sequences = [
        np.concatenate([trunk[: rng.integers(0, 40)], rng.integers(0, 5, rng.integers(1, 20))]) for _ in range(30)
    ]
    distinct = {
        tuple(s[:k].tolist()) for s in sequences for k in range(1, len(s) + 1)
    }  # the trie's nodes, by brute force
    assert tokens_to_compute(sequences) == (len(distinct), sum(map(len, sequences)))
    order = lexicographic_order(sequences)
    assert [sequences[i].tolist() for i in order] == sorted(s.tolist() for s in sequences)
    assert (
        common_prefix(np.array([1, 2, 3]), np.array([1, 2])) == 2 and common_prefix(np.array([4]), np.array([5])) == 0
    )


def test_runs_group_long_shared_prefixes_only():
    base = np.arange(1000) % 97 + 10
    a, b = np.concatenate([base[:600], [1, 1]]), np.concatenate([base[:700], [2, 2]])
    c = np.concatenate([base[:100], [3] * 600])  # shares 100 tokens, under a quarter of its length
    runs, alone = shared_runs([a, c, b])
    assert runs == [[0, 2]] and alone == [1]


@pytest.fixture(scope="module")
def samples(tokenizer):
    stream = token_stream(load_corpus(), tokenizer)
    return build_samples(
        tokenizer, HaystackOptions(needle="kv"), [384, 512], [0, 30, 60, 100], trials=2, seed=3, stream=stream
    )


def test_trial_draw_shares_the_haystack_across_depths_and_lengths(tokenizer, samples):
    stream = token_stream(load_corpus(), tokenizer)
    for trial in (0, 1):
        mine = [s for s in samples if s.trial == trial]
        assert len({s.info["haystack_offset"] for s in mine}) == 1 and len({s.answer_text for s in mine}) == 1
        for s in mine:  # every prompt runs unchanged up to the earliest needle it holds
            first = min(start for start, _ in s.needle_spans + s.distractor_spans)
            for other in mine:
                other_first = min(start for start, _ in other.needle_spans + other.distractor_spans)
                assert common_prefix(s.prompt_ids, other.prompt_ids) >= min(first, other_first)
    fresh = build_samples(
        tokenizer, HaystackOptions(needle="kv", draw="sample"), [512], [0, 50], 1, seed=3, stream=stream
    )
    assert fresh[0].info["haystack_offset"] != fresh[1].info["haystack_offset"]
    assert fresh[0].answer_text != fresh[1].answer_text


@pytest.mark.parametrize("variant", ["softmax", "ssmax", "logn"])
def test_shared_cache_scores_equal_independent_passes(tokenizer, samples, variant):
    model = make_llama(len(tokenizer), seed=1, max_positions=1024).double()
    if variant != "softmax":
        apply_attention(model, variant, s=0.4, train_length=256)
    adapter = TransformersBackend(
        LoadedModel(model, tokenizer, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float64, "none")
    )
    requests = [AnswerScoreRequest(s.prompt_ids, s.answer_ids) for s in samples]
    runs, alone = shared_runs([np.concatenate([r.prompt, r.answer]) for r in requests])
    assert len(alone) <= 4  # only a needle at depth 0 may share too little
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    shared = {i: score for run in runs for i, score in zip(run, adapter.answer_shared([requests[i] for i in run]))}
    hook.remove()
    assert sum(seen) < 0.75 * sum(requests[i].length for run in runs for i in run)  # the common prefixes ran once
    for i in shared:
        request = requests[i]
        alone_score = adapter.score_answers([request])[0]
        np.testing.assert_allclose(shared[i].token_logprobs, alone_score.token_logprobs, rtol=0, atol=1e-9)
        assert (shared[i].greedy_correct, shared[i].first_token_rank) == (
            alone_score.greedy_correct,
            alone_score.first_token_rank,
        )


def test_generation_on_the_shared_cache_equals_plain_generation(tokenizer, samples):
    model = make_llama(len(tokenizer), seed=2, max_positions=1024).double()
    apply_attention(model, "ssmax", s=0.4)
    adapter = TransformersBackend(
        LoadedModel(model, tokenizer, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float64, "none")
    )
    requests = [GenerateRequest(s.prompt_ids, 8) for s in samples[::2]]
    runs, _ = shared_runs([r.prompt for r in requests])
    assert runs and max(map(len, runs)) >= 3
    for run in runs:
        for i, tokens in zip(run, adapter.answer_shared([requests[i] for i in run])):
            np.testing.assert_array_equal(tokens, adapter.generate([requests[i]])[0])


def test_no_sharing_where_the_prefix_depends_on_the_row_length(tokenizer):
    model = make_llama(len(tokenizer))
    adapter = TransformersBackend(
        LoadedModel(model, tokenizer, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float32, "none")
    )
    assert adapter.can_share_prefixes()
    apply_attention(model, "ssmax", s=0.4, n_mode="length")  # every query's factor uses the whole row's length
    assert not adapter.can_share_prefixes()
    from transformers import MistralConfig, MistralForCausalLM

    windowed = MistralForCausalLM(
        MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            sliding_window=64,
        )
    )
    assert not TransformersBackend(
        LoadedModel(
            windowed, tokenizer, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float32, "none"
        )
    ).can_share_prefixes()  # its cache cannot be cut back


def test_cli_rows_do_not_depend_on_the_prefix_cache(tiny_checkpoint, tmp_path, monkeypatch):
    app = cli.register_tasks()
    frames, walked = [], []
    original = TransformersBackend.answer_shared
    monkeypatch.setattr(
        prefix_cost, "choose_path", lambda predicted: "walk"
    )  # the walk itself is under test, not when it pays
    monkeypatch.setattr(
        TransformersBackend,
        "answer_shared",
        lambda self, requests: (walked.append(len(requests)), original(self, requests))[1],
    )
    for flag in ("--prefix-cache", "--no-prefix-cache"):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(
            app,
            [
                "run",
                "needle",
                "--model",
                str(tiny_checkpoint),
                "--lengths",
                "320,448",
                "--depths",
                "0:100:50",
                "--trials",
                "2",
                "--attention",
                "softmax,ssmax",
                "--ssmax-s",
                "0.4",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--quiet",
                flag,
            ],
        )
        assert result.exit_code == 0, result.output
        frame = pd.read_parquet(out / "results.parquet")
        frames.append(
            frame.sort_values(["attention", "context_length", "depth", "trial", "metric"]).reset_index(drop=True)
        )
    shared, plain = frames
    assert sum(walked) >= 16  # of 24 samples (x2 variants), those with the needle past depth 0 shared a cache
    assert (shared.value.to_numpy() == plain.value.to_numpy()).mean() > 0.5  # most agree to the bit
    np.testing.assert_allclose(shared.value, plain.value, rtol=1e-4, atol=1e-4)
