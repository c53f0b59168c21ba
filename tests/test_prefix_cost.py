"""The prefix cache is walked only where its measured cost beats batched passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.attention import AttentionSpec, RunVariant
from evalkit.backends.transformers import TransformersBackend
from evalkit.bench.timing import forward_flops_per_token
from evalkit.core.requests import AnswerScoreRequest
from evalkit.core.task import Sample, Task
from evalkit.models import prefix_cost
from evalkit.models.loading import LoadedModel, ModelSource
from evalkit.models.prefix_cost import PathCosts, body_flops, predicted_seconds
from evalkit.run.runner import Runner
from tests.conftest import make_llama


def test_body_flops_match_the_bench_count_without_the_head():
    config = make_llama(100).config
    for length in (1, 15, 256):
        head = 2 * config.hidden_size * config.vocab_size
        assert body_flops(config, length, 0) / length + head == pytest.approx(forward_flops_per_token(config, length))
    # appending after a cache: the same work as the tail of the whole sequence
    assert body_flops(config, 40, 60) == pytest.approx(body_flops(config, 100, 0) - body_flops(config, 60, 0))


def trial_requests(prompt_len=300, depths=(100, 150, 200, 250, 280)):
    """One trial's prompts: the same haystack with a 5-token needle at several depths."""
    rng = np.random.default_rng(0)
    hay, needle = rng.integers(5, 90, prompt_len), np.array([1, 2, 3, 4, 5])
    prompts = [np.concatenate([hay[:d], needle, hay[d : prompt_len - 5]]) for d in depths]
    return [AnswerScoreRequest(p, np.array([7, 8])) for p in sorted(prompts, key=lambda p: p.astype(">i8").tobytes())]


def test_predicted_seconds_by_hand():
    config = make_llama(100).config
    requests = trial_requests()
    # overheads only: the walk pays one call per request, batched passes a share of one call each
    shared, batched = predicted_seconds(requests, PathCosts(0.0, 0.0, 0.002, 0.0), config, batch_tokens=604)
    assert shared == pytest.approx(5 * 0.002) and batched == 0.0
    shared, batched = predicted_seconds(requests, PathCosts(0.003, 0.0, 0.0, 0.0), config, batch_tokens=604)
    assert shared == 0.0 and batched == pytest.approx(5 * 0.003 / 2)  # two 302-token requests per batch
    # FLOPs only: the walk computes each request's tokens after what it shares with the one before
    shared, batched = predicted_seconds(requests, PathCosts(0.0, 1.0, 0.0, 1.0), config, batch_tokens=604)
    keeps = [0] + [
        int(np.flatnonzero(np.concatenate([a.prompt, a.answer]) != np.concatenate([b.prompt, b.answer]))[0])
        for a, b in zip(requests, requests[1:])
    ]
    assert shared == pytest.approx(sum(body_flops(config, 302 - k, k) for k in keeps))
    assert batched == pytest.approx(5 * body_flops(config, 302, 0)) and shared < 0.75 * batched


class ScoreTask(Task):
    name, description, key_columns = "score", "", ()

    def rows(self, sample, answer):
        return [{"metric": "logprob", "value": answer.logprob}]


class Store:
    def __init__(self):
        self.rows = {}

    def is_done(self, variant, sample_id):
        return False

    def append(self, variant, sample_id, rows):
        self.rows[sample_id] = rows


@pytest.fixture(scope="module")
def adapter():
    model = make_llama(100, seed=2).double()
    return TransformersBackend(
        LoadedModel(model, None, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float64, "none")
    )


@pytest.mark.parametrize(
    "costs, walked",
    [
        (PathCosts(1e-4, 1e-9, 1.0, 1e-9), False),  # steps dear: batched
        (PathCosts(1.0, 1e-9, 1e-4, 1e-9), True),
    ],
)  # calls dear: the walk
def test_default_walks_the_cache_only_where_it_pays(adapter, monkeypatch, costs, walked):
    samples = [Sample(f"s{i}", r, {}) for i, r in enumerate(trial_requests())]
    monkeypatch.setattr(prefix_cost, "costs_for", lambda *args: costs)
    calls = []
    original = TransformersBackend.answer_shared
    monkeypatch.setattr(
        TransformersBackend,
        "answer_shared",
        lambda self, requests: (calls.append(len(requests)), original(self, requests))[1],
    )
    store = Store()
    runner = Runner(adapter, store, 4096, None)  # the default, as `evalkit run` builds it
    runner.run(ScoreTask(None, None), samples, [RunVariant("softmax", AttentionSpec("softmax"))])
    assert (sum(calls) == 5) == walked and (sum(calls) == 0) == (not walked)
    assert (
        runner.prefix_decision["groups_walked"] == int(walked)
        and runner.prefix_decision["costs"]["step_call"] == costs.step_call
    )
    # the rows do not depend on the path
    alone = [adapter.score_answers([s.request])[0].logprob for s in samples]
    np.testing.assert_allclose([store.rows[s.id][0]["value"] for s in samples], alone, rtol=1e-9)


def test_measured_costs_are_positive_and_remembered(adapter):
    tokens = np.arange(200) % 90 + 5
    first = prefix_cost.costs_for(adapter, tokens, 4096)
    assert first.step_call > 0 and min(first.batched_call, first.batched_per_flop, first.step_per_flop) >= 0
    assert prefix_cost.costs_for(adapter, tokens, 4096) is first  # measured once per model


def test_the_manifest_records_the_decision(tiny_checkpoint, tmp_path):
    import json

    from typer.testing import CliRunner

    import cli

    for flag, mode in (("--prefix-cache", "auto"), ("--no-prefix-cache", "off")):
        out = tmp_path / mode
        result = CliRunner().invoke(
            cli.register_tasks(),
            [
                "run",
                "needle",
                "--model",
                str(tiny_checkpoint),
                "--lengths",
                "320",
                "--depths",
                "50,100",
                "--trials",
                "1",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--quiet",
                flag,
            ],
        )
        assert result.exit_code == 0, result.output
        decision = json.loads((out / "manifest.json").read_text())["prefix_cache"]
        assert decision["mode"] == mode
        if mode == "auto":  # one group (the two depths of the trial), walked or not, with the costs that decided it
            assert (
                decision["groups"] == 1 and decision["costs"]["step_call"] >= 0
            )  # a fit, clamped at 0 on a busy machine
            assert set(decision["predicted_seconds"]) == {"auto", "batched_only"}
