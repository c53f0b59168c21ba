"""Queries branched off one trunk cache, packed in one batch, equal independent passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.attention import apply_attention
from evalkit.backends.transformers import TransformersBackend
from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from evalkit.core.task import Sample
from evalkit.models.branch import packs, trunk_length
from evalkit.models.loading import LoadedModel, ModelSource
from tests.conftest import make_llama

VOCAB = 120


def _adapter(variant: str, seed: int = 0, **overrides) -> TransformersBackend:
    model = make_llama(VOCAB, seed=seed, max_positions=1024, **overrides).double()
    if variant != "softmax":
        apply_attention(
            model,
            variant,
            s=0.4,
            b=0.1 if variant == "ssmax-bias" else None,
            train_length=64,
            beta=0.5 if variant == "mistral-beta" else None,
            original_length=64,
        )
    return TransformersBackend(
        LoadedModel(model, None, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float64, "none")
    )


def _queries(count: int, trunk: int = 150, seed: int = 0):
    """A trunk and ``count`` suffixes of different lengths (questions) with answers of different lengths."""
    rng = np.random.default_rng(seed)
    hay = rng.integers(1, VOCAB, trunk)
    questions = [np.concatenate([hay, rng.integers(1, VOCAB, rng.integers(1, 9))]) for _ in range(count)]
    return [AnswerScoreRequest(q, rng.integers(1, VOCAB, rng.integers(1, 6))) for q in questions]


@pytest.mark.parametrize("variant", ["softmax", "ssmax", "ssmax-bias", "logn", "mistral-beta"])
def test_branched_scores_equal_independent_passes(variant):
    adapter = _adapter(variant)
    requests = _queries(9)
    seen = []
    hook = adapter.model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    branched = adapter.answer_branched(requests, batch_tokens=2048)
    hook.remove()
    assert seen[0] == 150 and len(seen) == 2  # the trunk once, then every suffix in one call
    assert seen[1] == sum(r.length - 1 - 150 for r in requests)
    for request, got in zip(requests, branched):
        alone = adapter.score_answers([request])[0]
        np.testing.assert_allclose(got.token_logprobs, alone.token_logprobs, rtol=0, atol=1e-10)
        assert (got.greedy_correct, got.first_token_rank) == (alone.greedy_correct, alone.first_token_rank)


def test_small_packs_and_gqa_heads_give_the_same_scores():
    adapter = _adapter("ssmax", seed=3, num_attention_heads=8, num_key_value_heads=2)
    requests = _queries(7, trunk=90, seed=1)
    assert len(packs(requests, 90, 12)) > 2
    # batch_tokens 100 forces packs of about 10 suffix tokens: the cache is cut back to the trunk between them
    for request, got in zip(requests, adapter.answer_branched(requests, batch_tokens=100)):
        np.testing.assert_allclose(
            got.token_logprobs, adapter.score_answers([request])[0].token_logprobs, rtol=0, atol=1e-10
        )


def test_trunk_stops_before_the_shortest_prompts_last_token():
    a = AnswerScoreRequest(np.arange(1, 11), np.array([5, 6]))
    b = AnswerScoreRequest(np.arange(1, 11), np.array([5, 7]))  # same prompt: the trunk must leave its last token
    assert trunk_length([a, b]) == 9
    assert trunk_length([a, AnswerScoreRequest(np.array([1, 2, 9]), np.array([3]))]) == 2


@pytest.mark.parametrize("variant", ["softmax", "ssmax"])
def test_branched_generation_equals_plain_generate(variant):
    adapter = _adapter(variant, seed=2)
    requests = [GenerateRequest(r.prompt, int(n)) for r, n in zip(_queries(8, seed=4), [1, 3, 6, 12, 12, 12, 20, 20])]
    # end of sequence: a token one long row generates midway, so that row stops early and the others go on
    adapter.model.generation_config.eos_token_id = int(adapter.generate([requests[-1]])[0][5])
    branched = adapter.answer_branched(requests, batch_tokens=2048)
    stopped = 0
    for request, got in zip(requests, branched):
        want = adapter.generate([request])[0]
        np.testing.assert_array_equal(got, want)
        stopped += len(want) < request.max_new_tokens
    assert all(len(g) for g in branched)
    assert stopped >= 1  # a row ended at its end-of-sequence token while others went on


def test_branch_prediction_by_hand():
    from evalkit.models.prefix_cost import PathCosts, body_flops, predicted_branch_seconds

    config = make_llama(VOCAB).config
    requests = _queries(6)
    suffix = sum(r.length - 1 - 150 for r in requests)
    # overheads only: the trunk and one pack are two batched calls, whatever the number of queries
    assert predicted_branch_seconds(requests, PathCosts(0.01, 0.0, 5.0, 0.0), config, 2048) == pytest.approx(0.02)
    # FLOPs only: the trunk once, then the pack's tokens over the trunk and the whole pack (dense, masked)
    flops = predicted_branch_seconds(requests, PathCosts(0.0, 1.0, 0.0, 0.0), config, 2048)
    assert flops == pytest.approx(body_flops(config, 150, 0) + body_flops(config, suffix, 150 + suffix / 2))
    assert flops < 0.3 * sum(body_flops(config, r.length - 1, 0) for r in requests)


@pytest.mark.parametrize(
    "costs, path",
    [
        ((1.0, 1e-12, 1.0, 1e-12), "branch"),  # calls dear: one trunk, one pack
        ((1.0, 1e-12, 1e-6, 1e-12), "walk"),
    ],
)  # batched calls dear, steps cheap
def test_runner_branches_where_predicted_fastest(monkeypatch, costs, path):
    from evalkit.attention import AttentionSpec, RunVariant
    from evalkit.models import prefix_cost
    from evalkit.run.runner import Runner
    from tests.test_prefix_cost import ScoreTask, Store

    adapter = _adapter("ssmax")
    samples = [Sample(f"q{i}", r, {}) for i, r in enumerate(_queries(12))]
    monkeypatch.setattr(prefix_cost, "costs_for", lambda *args: prefix_cost.PathCosts(*costs))
    store = Store()
    runner = Runner(adapter, store, 512, None)
    runner.run(ScoreTask(None, None), samples, [RunVariant("ssmax", AttentionSpec("ssmax", s=0.4))])
    decision = runner.prefix_decision
    assert decision["samples_branched"] == 12 * (path == "branch") and decision["samples_walked"] == 12 * (
        path == "walk"
    )
    assert "branching off its trunk" in decision["why"]
    alone = [adapter.score_answers([s.request])[0].logprob for s in samples]
    np.testing.assert_allclose([store.rows[s.id][0]["value"] for s in samples], alone, rtol=0, atol=1e-10)


def test_abcdigits_all_keys_share_one_haystack_and_ask_every_key(tokenizer):
    from evalkit.data.haystack import abcdigits_all_keys

    samples = abcdigits_all_keys(tokenizer, 600, trial=0, seed=5)
    assert len(samples) == 26 and len({s.answer_text for s in samples}) == 26
    assert len({s.info["keys"][0] for s in samples}) == 26 and max(s.context_length for s in samples) <= 600
    requests = [AnswerScoreRequest(s.prompt_ids, s.answer_ids) for s in samples]
    assert trunk_length(requests) >= 590  # only the query line differs
    for s in samples:  # each key's line holds its answer, and the prompt ends on "K="
        start, end = s.needle_spans[0]
        assert tokenizer.decode(s.prompt_ids[start:end]) == f"{s.info['keys'][0]}={s.answer_text}\n"
        assert tokenizer.decode(np.concatenate([s.prompt_ids[-4:], s.answer_ids])).endswith(
            f"{s.info['keys'][0]}={s.answer_text}"
        )


def test_bench_queries_cli_on_a_tiny_checkpoint(tiny_checkpoint, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(
        cli.register_tasks(),
        [
            "bench",
            "queries",
            "--model",
            str(tiny_checkpoint),
            "--length",
            "400",
            "--device",
            "cpu",
            "--rounds",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "bench_queries.csv")
    assert len(frame) == 4 and (frame.queries == 26).all()
    assert frame.tokens_computed[0] < 0.1 * frame.tokens_computed[1]  # the trunk once vs 26 whole passes
    assert "max |diff|" in result.output
