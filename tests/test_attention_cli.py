"""Attention variants through ``evalkit run``: several variants on the same samples, checkpoints
that carry SSMax, RoPE overrides, and bad attention input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cli
from evalkit.attention import apply_attention
from tests.conftest import make_llama

runner = CliRunner()
APP = cli.register_tasks()


def run_ppl(model, out, *extra):
    args = [
        "run",
        "perplexity",
        "--model",
        str(model),
        "--lengths",
        "96",
        "--samples",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--dataset",
        "builtin:pydoc-topics",
        *map(str, extra),
    ]
    return runner.invoke(APP, args)


def reference_mean_nll(checkpoint, tokens, **variant) -> float:
    """NLL through the float64 reference attention: an independent path from the fused one."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    apply_attention(model, **variant)
    model.set_attn_implementation("evalkit_reference")
    ids = torch.from_numpy(tokens)[None]
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def window_tokens(tokenizer, offset, length):
    from evalkit.data.corpus import load_corpus, token_stream

    return token_stream(load_corpus(), tokenizer).tokens[offset : offset + length]


def test_variants_share_samples_and_match_reference(tiny_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "run"
    result = run_ppl(
        tiny_checkpoint, out, "--attention", "softmax,ssmax,logn", "--ssmax-s", "0.6", "--train-length", "32"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    means = frame[frame.metric == "mean_nll"]
    offsets = {a: sorted(p.offset) for a, p in means.groupby("attention")}
    assert offsets["softmax"] == offsets["ssmax"] == offsets["logn"]  # same windows for every variant
    row = means[means.attention == "ssmax"].iloc[0]
    tokens = window_tokens(tokenizer, int(row.offset), 96)
    assert abs(row.value - reference_mean_nll(tiny_checkpoint, tokens, variant="ssmax", s=0.6)) < 1e-4
    row = means[means.attention == "logn"].iloc[0]
    assert abs(row.value - reference_mean_nll(tiny_checkpoint, tokens, variant="logn", train_length=32)) < 1e-4
    soft = means[means.attention == "softmax"].value.to_numpy()
    assert not np.allclose(soft, means[means.attention == "ssmax"].value.to_numpy())
    manifest = json.loads((out / "manifest.json").read_text())
    by_variant = {a["variant"]: a for a in manifest["attention"]}
    assert by_variant["ssmax"]["s"] == 0.6 and by_variant["logn"]["train_length"] == 32
    assert by_variant["logn"]["s"] is None


@pytest.fixture(scope="module")
def ssmax_checkpoint(tmp_path_factory, tokenizer):
    """A model 'trained' with learnable per-head SSMax, saved in evalkit's convention."""
    folder = tmp_path_factory.mktemp("ssmax-ckpt")
    model = make_llama(len(tokenizer), seed=3)
    apply_attention(model, "ssmax", s=torch.tensor([[0.3, 0.5, 0.7, 0.9], [0.4, 0.6, 0.8, 1.0]]), learnable=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_auto_picks_up_ssmax_from_checkpoint(ssmax_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "run"
    result = run_ppl(ssmax_checkpoint, out, "--attention", "auto,softmax")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.attention) == {"ssmax", "softmax"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attention"][0]["from_checkpoint"] and manifest["attention"][0]["per_head_tensors"] == ["s"]
    row = frame[(frame.metric == "mean_nll") & (frame.attention == "ssmax")].iloc[0]
    tokens = window_tokens(tokenizer, int(row.offset), 96)
    table = torch.tensor([[0.3, 0.5, 0.7, 0.9], [0.4, 0.6, 0.8, 1.0]])
    assert abs(row.value - reference_mean_nll(ssmax_checkpoint, tokens, variant="ssmax", s=table)) < 1e-4


def test_rope_override_is_applied_and_recorded(tiny_checkpoint, tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    base, raised = tmp_path / "base", tmp_path / "raised"
    assert run_ppl(tiny_checkpoint, base).exit_code == 0
    result = run_ppl(tiny_checkpoint, raised, "--rope-theta", "500000")
    assert result.exit_code == 0, result.output
    manifest = json.loads((raised / "manifest.json").read_text())
    assert manifest["model"]["config_changes"]["rope_theta"]["to"] == 500000
    a, b = (pd.read_parquet(x / "results.parquet") for x in (base, raised))
    a, b = a[a.metric == "mean_nll"], b[b.metric == "mean_nll"]
    assert np.abs(a.value.to_numpy() - b.value.to_numpy()).max() > 1e-6
    # independently: a model built from a config that says theta = 500000
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    config.rope_parameters = {**config.rope_parameters, "rope_theta": 500000.0}
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, config=config).eval()
    ids = torch.from_numpy(window_tokens(tokenizer, int(b.offset.iloc[0]), 96))[None]
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss.item()
    assert abs(b.value.iloc[0] - want) < 1e-5


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--attention", "ssmax"], ["needs --ssmax-s"]),
        (["--attention", "ssmaxx"], ["unknown attention variant", "did you mean 'ssmax'"]),
        (["--attention", "softmax,,ssmax"], ["empty name"]),
        (["--attention", "softmax,auto"], ["appears twice"]),
        (["--attention", "ssmax", "--ssmax-n", "row"], ["--ssmax-n"]),
        (["--rope-scaling", "yarn"], ["needs a factor"]),
        (["--attention", "ssmax", "--attention-params", "nope.json"], ["not found"]),
    ],
)
def test_bad_attention_input(tiny_checkpoint, tmp_path, extra, words):
    result = run_ppl(tiny_checkpoint, tmp_path / "o", *extra)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split()).lower()
    for word in words:
        assert word.lower() in text, (word, result.output)


def test_per_head_table_of_wrong_shape(tiny_checkpoint, tmp_path):
    params = tmp_path / "s.json"
    params.write_text(json.dumps({"s": [[0.5, 0.5, 0.5]]}))  # 1 x 3, the model is 2 layers x 4 heads
    result = run_ppl(tiny_checkpoint, tmp_path / "o", "--attention", "ssmax", "--attention-params", params)
    assert result.exit_code == 2, result.output
    assert "(2, 4)" in result.output
