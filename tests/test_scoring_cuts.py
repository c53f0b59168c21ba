"""Scoring and numerics: exact_match parses the answer, lengths at the position limit, float64 factors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_llama
from typer.testing import CliRunner

import cli
from evalkit.core.scoring import parse_answer
from evalkit.data.haystack import load_samples_file

runner = CliRunner()
APP = cli.register_tasks()


def needle(model, out, *extra):
    return runner.invoke(
        APP, ["run", "needle", "--model", str(model), "--device", "cpu", "--quiet", "--out", str(out), *map(str, extra)]
    )


def chain_model(tokenizer, chain: list[int], folder):
    """A Llama whose greedy continuation of token chain[0] is chain[1:], then end of text.

    Attention and MLP outputs are zeroed, so the next token depends on the current one only: each
    chain token's embedding is its own basis vector, and the LM head maps it to its successor.
    """
    assert len(set(chain)) == len(chain), "a bigram model cannot follow a token two ways"
    model = make_llama(len(tokenizer))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        width = model.config.hidden_size
        model.lm_head.weight.zero_()
        for i, (current, following) in enumerate(zip(chain, chain[1:] + [tokenizer.eos_token_id])):
            model.model.embed_tokens.weight[current] = torch.eye(width)[i]
            model.lm_head.weight[following] += 10 * torch.eye(width)[i]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "text, gold, said",
    [
        (" 48213. Remember it. 48213 is the pass key.", "48213", "48213"),
        ("48213\nThe pass key is 48213", "48213", "48213"),
        ("\n 12, 345 and more", "12, 345", "12, 345"),
        (" 482139", "48213", "482139"),
        ("", "48213", ""),
    ],
)
def test_parse_answer_takes_the_first_answer_length_span_of_the_first_line(text, gold, said):
    assert parse_answer(text, gold) == said


def test_exact_match_ignores_text_after_a_correct_answer(tokenizer, tmp_path):
    prompt = "The pass key is 80264. Remember it. What is the pass key? The pass key is"
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"prompt": prompt, "answer": "80264"}) + "\n")
    (sample,) = load_samples_file(samples, tokenizer)
    extra = tokenizer(" and.\nYes", add_special_tokens=False)["input_ids"]
    chain = [int(sample.prompt_ids[-1]), *sample.answer_ids.tolist(), *extra]
    model = chain_model(tokenizer, chain, tmp_path / "chain")
    result = needle(model, tmp_path / "gen", "--samples-file", samples, "--scoring", "generate")
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "gen" / "results.parquet").set_index("metric")
    assert rows.generated.iloc[0] == "80264 and.\nYes"  # the model said the answer, then more
    assert rows.loc["exact_match", "value"] == 1.0 and rows.loc["contains", "value"] == 1.0


@pytest.fixture(scope="module")
def short_checkpoint(tokenizer, tmp_path_factory):
    """A tiny Llama with 128 positions."""
    folder = tmp_path_factory.mktemp("short")
    make_llama(len(tokenizer), max_positions=128).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_needle_at_exactly_the_position_limit(short_checkpoint, tmp_path):
    # a one-digit passkey is one answer token: prompt 128 + answer 1 - 1 = 128 positions, inside the limit
    result = needle(
        short_checkpoint, tmp_path / "fits", "--lengths", "128", "--depths", "50", "--trials", "2", "--digits", "1"
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "fits" / "results.parquet")
    assert set(rows.context_length) == {128} and len(rows[rows.metric == "greedy_correct"]) == 2
    # five digits need four positions past the prompt: extrapolation, refused in one line unless allowed
    result = needle(short_checkpoint, tmp_path / "over", "--lengths", "128", "--depths", "50", "--trials", "1")
    assert (
        result.exit_code == 2 and "extrapolation" in result.output and "max_position_embeddings (128)" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1, result.output
    result = needle(
        short_checkpoint,
        tmp_path / "allowed",
        "--lengths",
        "128",
        "--depths",
        "50",
        "--trials",
        "1",
        "--allow-extrapolation",
    )
    assert result.exit_code == 0, result.output


def test_answer_scoring_runs_prompt_plus_answer_minus_one_positions(tokenizer):
    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.requests import AnswerScoreRequest
    from evalkit.models.loading import LoadedModel, ModelSource

    model = make_llama(len(tokenizer))
    seen = []
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    adapter = TransformersBackend(
        LoadedModel(model, tokenizer, ModelSource("hf", "mem"), torch.device("cpu"), torch.float32, "none")
    )
    rng = np.random.default_rng(0)
    request = AnswerScoreRequest(rng.integers(1, 200, 40), rng.integers(1, 200, 5))
    (score,) = adapter.score_answers([request])
    assert seen == [44] == [request.positions]
    with torch.no_grad():
        logits = model(torch.from_numpy(np.concatenate([request.prompt, request.answer]))[None]).logits[0, 39:44]
    expected = torch.log_softmax(logits, -1)[torch.arange(5), torch.from_numpy(request.answer)]
    assert np.allclose(score.token_logprobs, expected.numpy(), atol=1e-5)


def naive_attention(q, k, v, factor):
    """softmax(factor_i * q_i . k / sqrt(d)) v with a causal mask, float64, GQA by repetition."""
    heads, length, dim = q.shape[1], q.shape[2], q.shape[3]
    k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    logits = factor * (q @ k.transpose(-1, -2)) / math.sqrt(dim)  # (B, H, T, T)
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), -1) @ v  # (B, H, T, D)


@pytest.mark.parametrize("variant", ["ssmax", "logn"])
def test_float64_factor_matches_naive_float64_attention(variant):
    from evalkit.attention import apply_attention, evalkit_attention_forward

    model = make_llama(300).double()
    s = torch.tensor([0.375, 0.5, 0.4375, 0.625])  # exact in float32, where per-head values are stored
    apply_attention(model, variant, s=s.expand(2, 4), train_length=16)
    module = model.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 200, 16, generator=gen, dtype=torch.float64) * 3 for h in (4, 2, 2))
    out, _ = evalkit_attention_forward(module, q, k, v, None, scaling=16**-0.5, is_causal=True)  # (B, T, H, D)
    n = torch.arange(1, 201, dtype=torch.float64).view(1, 1, 200, 1)
    factor = s.double().view(1, 4, 1, 1) * n.log() if variant == "ssmax" else (n.log() / math.log(16)).clamp(min=1)
    expected = naive_attention(q, k, v, factor).transpose(1, 2)
    assert out.dtype == torch.float64
    assert (out - expected).abs().max().item() < 1e-10


def test_attention_check_runs_in_float64(tiny_checkpoint):
    result = runner.invoke(
        APP,
        [
            "attention",
            "check",
            "--model",
            str(tiny_checkpoint),
            "--attention",
            "ssmax",
            "--ssmax-s",
            "0.5",
            "--dtype",
            "float64",
            "--length",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "ssmax" in line and "position" in line)
    deviation = float(row.split("│")[3])
    assert deviation < 1e-10, result.output
