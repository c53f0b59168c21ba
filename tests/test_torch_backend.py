"""The plain-PyTorch backend: a causal LM that is only a torch module (ids -> logits), no transformers
model, runs perplexity, needle and RULER end to end, and its numbers equal a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import evalkit
from evalkit.core.errors import ConfigError


class CumulativeLM(torch.nn.Module):
    """A causal LM in plain torch: each position sees its token and the running mean of the tokens
    so far (so its loss depends on the context), then a tanh layer and the output head."""

    def __init__(self, vocab: int, width: int = 16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(vocab, width, generator=generator))
        self.mix = torch.nn.Parameter(torch.randn(2 * width, width, generator=generator) / width**0.5)
        self.head = torch.nn.Parameter(torch.randn(width, vocab, generator=generator) / width**0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed[ids]  # (B, T, D)
        seen = torch.arange(1, ids.shape[1] + 1, device=ids.device)[None, :, None]  # (1, T, 1)
        context = x.cumsum(1) / seen  # (B, T, D): mean of tokens 0..t
        return torch.tanh(torch.cat([x, context], -1) @ self.mix) @ self.head  # (B, T, V)


def naive_logprobs(module: CumulativeLM, ids: list[int]) -> np.ndarray:
    """log p(token t+1 | tokens 0..t) for each t, one position at a time in float64 (no batching,
    no slicing tricks): the reference every backend number is checked against."""
    embed, mix, head = (p.detach().double() for p in (module.embed, module.mix, module.head))
    out = []
    for t in range(len(ids) - 1):
        x = embed[ids[t]]
        context = embed[ids[: t + 1]].mean(0)
        logits = torch.tanh(torch.cat([x, context]) @ mix) @ head
        out.append(torch.log_softmax(logits, -1)[ids[t + 1]].item())
    return np.array(out)


def naive_greedy(module: CumulativeLM, prompt: list[int], steps: int, eos: int) -> list[int]:
    ids = list(prompt)
    embed, mix, head = (p.detach().double() for p in (module.embed, module.mix, module.head))
    new = []
    for _ in range(steps):
        x, context = embed[ids[-1]], embed[ids].mean(0)
        token = int((torch.tanh(torch.cat([x, context]) @ mix) @ head).argmax())
        if token == eos:
            break
        new.append(token)
        ids.append(token)
    return new


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "cloud", "seven", "north"]
    path.write_text(" ".join(rng.choice(words, 4000)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def module(tokenizer):
    return CumulativeLM(len(tokenizer)).double()


def test_perplexity_equals_a_hand_computed_loss(module, tokenizer, corpus):
    from evalkit.data.corpus import load_corpus, token_stream

    run = evalkit.evaluate(
        module,
        tokenizer,
        task="perplexity",
        dataset=str(corpus),
        lengths="64,96",
        samples=2,
        progress=False,
        plots=False,
    )
    assert run.manifest["backend"] == "torch" and run.manifest["model"]["architecture"] == "CumulativeLM"
    stream = token_stream(load_corpus(str(corpus)), tokenizer)
    windows = run.rows[run.rows.metric == "mean_nll"]
    assert len(windows) == 4
    for row in windows.itertuples():
        tokens = stream.tokens[row.offset : row.offset + row.context_length].tolist()
        assert row.value == pytest.approx(-naive_logprobs(module, tokens).mean(), rel=1e-6)  # float32 losses


def test_needle_answer_scores_equal_a_hand_computation(module, tokenizer):
    run = evalkit.evaluate(
        module, tokenizer, task="needle", lengths="128", depths="0,100", trials=2, progress=False, plots=False
    )
    scores = run.rows.pivot_table(index=["depth", "trial"], columns="metric", values="value")
    assert len(scores) == 4
    from evalkit.core.task import TaskContext
    from tasks.needle import NeedleOptions, NeedleTask

    task = NeedleTask(NeedleOptions(lengths="128", depths="0,100", trials=2), TaskContext(tokenizer, None, False, 1234))
    for sample in task.samples():
        prompt, answer = sample.request.prompt.tolist(), sample.request.answer.tolist()
        logprobs = naive_logprobs(module, prompt + answer)[len(prompt) - 1 :]
        row = scores.loc[(sample.keys["depth"], sample.keys["trial"])]
        assert row.answer_logprob == pytest.approx(logprobs.sum(), rel=1e-6)


def test_ruler_generation_equals_a_hand_greedy_decode(module, tokenizer):
    run = evalkit.evaluate(
        module,
        tokenizer,
        task="ruler",
        tasks="niah_single_1,vt",
        lengths="800",
        samples=2,
        fill="exact",
        progress=False,
        plots=False,
    )
    matched = run.rows[run.rows.metric == "string_match"]
    assert len(matched) == 4
    records = {(r.ruler_task, r.index): r for r in matched.itertuples()}
    from evalkit.core.task import TaskContext
    from tasks.ruler import RulerOptions, RulerTask

    task = RulerTask(
        RulerOptions(tasks="niah_single_1,vt", lengths="800", samples=2, fill="exact"),
        TaskContext(tokenizer, None, False, 1234),
    )
    generated = [s for s in task.samples() if s.id.endswith("-gen")]
    assert len(generated) == 4
    for sample in generated:
        name = sample.keys["ruler_task"]
        request = sample.request
        want = naive_greedy(module, request.prompt.tolist(), request.max_new_tokens, tokenizer.eos_token_id)
        row = records[(name, sample.keys["index"])]
        assert row.generated == tokenizer.decode(want, skip_special_tokens=True)
        gold = json.loads(row.answers)
        assert row.value == sum(g.lower() in row.generated.lower() for g in gold) / len(gold)  # RULER's string_match


def test_focus_and_variants_are_refused_in_one_line(module, tokenizer):
    with pytest.raises(ConfigError, match="torch backend cannot answer probe requests"):
        evalkit.evaluate(module, tokenizer, task="focus", lengths="128", progress=False, plots=False)
    with pytest.raises(ConfigError, match="torch backend cannot apply attention variant 'ssmax'.*--attention auto"):
        evalkit.evaluate(
            module, tokenizer, task="needle", lengths="128", attention="ssmax", ssmax_s=0.4, progress=False
        )


def test_a_checkpoint_asking_for_what_its_backend_cannot_do_stops_before_loading(tiny_checkpoint, tmp_path):
    from evalkit.run.evaluate import RunConfig, execute

    config = RunConfig("focus", str(tiny_checkpoint), {"lengths": "128"}, backend="torch", out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="torch backend cannot apply attention variant|not a checkpoint the torch"):
        execute(dataclass_replace(config, attention=({"name": "ssmax", "s": 0.4},)))
    assert not (tmp_path / "x").exists()


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_tokens_shared_with_rows_keep_their_columns(module, tokenizer):
    """A torch-module run's rows carry the same key columns as a transformers run's."""
    run = evalkit.evaluate(module, tokenizer, task="needle", lengths="128", depths="50", trials=1, progress=False)
    assert {"context_length", "depth", "trial", "needle", "metric", "value"} <= set(run.rows.columns)
    assert isinstance(run.rows, pd.DataFrame)


def test_a_backend_flag_without_its_backend_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(
        cli.register_tasks(), ["run", "perplexity", "--max-positions", "64", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "--max-positions is an option of the torch backend: add --backend torch" in result.output
    assert not (tmp_path / "x").exists()


class UniformBackend:
    """A backend defined only here: every next token has probability 1/V, so every token's loss is log V."""

    name = "uniform-test"
    summary = "test-only: a model that knows nothing"
    Options = None

    @classmethod
    def declared(cls):
        from evalkit.core.backend import Capabilities

        return Capabilities(requests=frozenset({"token_loss"}), variants=frozenset())

    @classmethod
    def load(cls, model, options, backend_options=None, log=print):
        from tests.conftest import make_tokenizer

        return cls(make_tokenizer())

    @classmethod
    def check_model(cls, model, variants, options):
        pass

    def __init__(self, tokenizer):
        from evalkit.attention import AttentionSpec

        self.tokenizer, self.max_positions, self.training_length = tokenizer, None, None
        self.device, self.config, self.native_scaling = "cpu", None, None
        self.native_attention = (AttentionSpec(variant="native"), {})
        self.hashes = {"weights": "uniform", "config": None, "tokenizer": None}
        self.content_hash = "uniform"

    def capabilities(self):
        return self.declared()

    def activate(self, variant):
        pass

    def batch_tokens(self):
        return 4096

    def attention_scale(self):
        return float("inf")

    def describe(self):
        return {"name": "uniform", "backend": self.name, "content_hash": self.content_hash}

    def answer(self, requests):
        return [np.full(r.length - 1, np.log(len(self.tokenizer)), dtype=np.float32) for r in requests]


def test_a_backend_registered_at_run_time_runs_end_to_end(corpus, tmp_path):
    """The backend seam: a backend class evalkit has never seen, registered at run time, answers a
    perplexity run through the same evaluate the CLI calls; its numbers are the hand-computed log V."""
    from evalkit.core.registry import BACKENDS
    from evalkit.run.evaluate import RunConfig, execute

    BACKENDS.register("uniform-test", UniformBackend)
    try:
        config = RunConfig(
            "perplexity",
            "anything",
            {"dataset": str(corpus), "lengths": "64", "samples": 2},
            backend="uniform-test",
            out=str(tmp_path / "run"),
            quiet=True,
            plots=False,
        )
        outcome = execute(config)
        windows = outcome.frame[outcome.frame.metric == "mean_nll"]
        assert len(windows) == 2 and np.allclose(windows.value, np.log(300), rtol=1e-6)
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["backend"] == "uniform-test" and manifest["model"]["name"] == "uniform"
        with pytest.raises(ConfigError, match="uniform-test backend does not answer probe requests"):
            execute(RunConfig("focus", "anything", {"lengths": "64"}, backend="uniform-test"))
    finally:
        BACKENDS.unregister("uniform-test")
