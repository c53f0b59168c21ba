"""Nested perplexity windows: one pass of the longest length per offset gives every length's rows,
exactly as separate passes do; the cases where that is not exact fall back to separate passes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from evalkit.backends.transformers import TransformersBackend
from evalkit.run.evaluate import RunConfig, execute

NO_OVERLAP = "none: random windows share no token"
KEYS = ["context_length", "sample", "position_bin", "metric"]


def run(checkpoint, out, quiet=True, **options):
    settings = {"lengths": "32,64,128", "samples": 3, "dataset": "builtin:pydoc-topics", **options}
    attention = settings.pop("attention", ({"name": "auto"},))
    dtype = settings.pop("dtype", "float32")
    config = RunConfig(
        task="perplexity",
        model=str(checkpoint),
        out=str(out),
        device="cpu",
        dtype=dtype,
        quiet=quiet,
        attention=attention,
        task_options=settings,
    )
    outcome = execute(config)
    manifest = json.loads((out / "manifest.json").read_text())
    frame = pd.read_parquet(out / "results.parquet").sort_values(KEYS).reset_index(drop=True)
    return outcome, manifest, frame


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 2e-5)])
def test_nested_rows_equal_independent_passes(tiny_checkpoint, tmp_path, dtype, tolerance):
    _, nested_manifest, nested = run(tiny_checkpoint, tmp_path / "nested", dtype=dtype)
    _, independent_manifest, independent = run(
        tiny_checkpoint, tmp_path / "independent", dtype=dtype, windows="independent"
    )
    assert nested_manifest["windows"] == {"requested": "nested", "used": "nested", "overlap": NO_OVERLAP}
    assert independent_manifest["windows"] == {"requested": "independent", "used": "independent", "overlap": NO_OVERLAP}
    assert (nested_manifest["samples"], independent_manifest["samples"]) == (3, 9)  # one pass per offset vs per length
    assert set(nested.pass_length) == {128} and (independent.pass_length == independent.context_length).all()
    # same windows: sample k of every length starts at the same offset, in both modes
    pd.testing.assert_frame_equal(
        nested[KEYS + ["offset", "position_end"]], independent[KEYS + ["offset", "position_end"]]
    )
    assert nested.groupby("sample").offset.nunique().eq(1).all()
    np.testing.assert_allclose(nested.value, independent.value, rtol=0, atol=tolerance)

    # and against plain transformers on the window of 32 cut from the stream at the recorded offset
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalkit.data.corpus import load_corpus, token_stream

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=getattr(torch, dtype)).eval()
    row = nested[(nested.metric == "mean_nll") & (nested.context_length == 32) & (nested["sample"] == 2)].iloc[0]
    stream = token_stream(load_corpus("builtin:pydoc-topics"), AutoTokenizer.from_pretrained(tiny_checkpoint))
    ids = torch.from_numpy(stream.tokens[row.offset : row.offset + 32]).long()[None]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - row.value) < (1e-6 if dtype == "float64" else 1e-4)  # sdpa paths differ by ~2e-7 in float64


def test_summary_has_the_same_form(tiny_checkpoint, tmp_path):
    nested, _, _ = run(tiny_checkpoint, tmp_path / "nested")
    independent, _, _ = run(tiny_checkpoint, tmp_path / "independent", windows="independent")
    assert list(nested.summary.columns) == list(independent.summary.columns)
    assert list(nested.summary.context_length) == [32, 64, 128] and (nested.summary.n == 3).all()
    assert list(nested.summary.tokens) == [3 * 31, 3 * 63, 3 * 127]
    pd.testing.assert_frame_equal(nested.summary, independent.summary, check_exact=False, atol=2e-5)
    assert sorted(p.name for p in nested.plots) == sorted(p.name for p in independent.plots)


@pytest.mark.parametrize(
    "options, why",
    [
        ({"attention": ({"name": "ssmax", "s": 0.5, "n_mode": "length"},)}, "--ssmax-n length on ssmax"),
        ({"stride": 16}, "--stride has its own windows"),
        ({"match": "lm-eval", "samples": 2}, "--match lm-eval has its own windows"),
    ],
)
def test_fallback_to_independent_says_why(tiny_checkpoint, tmp_path, options, why):
    _, manifest, frame = run(tiny_checkpoint, tmp_path / "run", **{"lengths": "32,64", **options})
    assert manifest["windows"]["used"] == "independent" and why in manifest["windows"]["why"]
    if "pass_length" in frame.columns:  # the random-window mode: one pass per length
        assert (frame.pass_length == frame.context_length).all()


def test_position_n_convention_nests(tiny_checkpoint, tmp_path):
    """With --ssmax-n position a query's n is its own number of keys: a prefix scores as its own window."""
    ssmax = ({"name": "ssmax", "s": 0.5, "n_mode": "position"},)
    _, manifest, nested = run(tiny_checkpoint, tmp_path / "nested", lengths="32,64", attention=ssmax, dtype="float64")
    _, _, independent = run(
        tiny_checkpoint,
        tmp_path / "independent",
        lengths="32,64",
        attention=ssmax,
        dtype="float64",
        windows="independent",
    )
    assert manifest["windows"]["used"] == "nested"
    np.testing.assert_allclose(nested.value, independent.value, rtol=0, atol=1e-10)


def test_prefix_limits_from_the_model_config():
    from transformers import LlamaConfig, MistralConfig

    from evalkit.attention import AttentionSpec, RunVariant
    from evalkit.run.attention_flags import prefix_limits

    softmax = RunVariant("softmax", AttentionSpec("softmax"), None, {"variant": "softmax", "n_mode": "position"})
    by_length = RunVariant("ssmax", AttentionSpec("ssmax", s=0.4), None, {"variant": "ssmax", "n_mode": "length"})
    assert prefix_limits(LlamaConfig(), [softmax]) == ()
    assert prefix_limits(LlamaConfig(), [softmax, by_length])[0][0] == 1
    window = prefix_limits(MistralConfig(sliding_window=48), [softmax])
    assert window == ((48, "sliding window of 48 tokens (config.sliding_window)"),)
    dynamic = LlamaConfig(
        max_position_embeddings=256, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    )
    assert prefix_limits(dynamic, [softmax])[0][0] == 256


def test_sliding_window_longer_than_a_length_falls_back(tmp_path, tokenizer):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=48,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=0,
    )
    folder = tmp_path / "tiny-mistral"
    MistralForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _, manifest, _ = run(folder, tmp_path / "wide", lengths="32,64", samples=1)
    assert manifest["windows"]["used"] == "independent" and "sliding window of 48" in manifest["windows"]["why"]
    _, manifest, _ = run(folder, tmp_path / "narrow", lengths="16,32", samples=1)  # every row inside the window
    assert manifest["windows"]["used"] == "nested"


def test_resume_of_an_interrupted_nested_run(tiny_checkpoint, tmp_path, monkeypatch):
    _, _, full = run(tiny_checkpoint, tmp_path / "full")
    calls = {"n": 0}
    original = TransformersBackend.answer

    def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, requests)

    monkeypatch.setattr(TransformersBackend, "answer", flaky)
    part = tmp_path / "part"
    config = RunConfig(
        task="perplexity",
        model=str(tiny_checkpoint),
        out=str(part),
        device="cpu",
        quiet=True,
        batch_tokens=128,
        task_options={"lengths": "32,64,128", "samples": 3, "dataset": "builtin:pydoc-topics"},
    )
    assert execute(config).interrupted
    journal = [json.loads(line) for line in (part / "journal.jsonl").read_text().splitlines()]
    assert [entry["sample_id"] for entry in journal] == ["nested-L128-w0"]  # one pass: every length of offset 0
    assert sorted({row["context_length"] for row in journal[0]["rows"]}) == [32, 64, 128]
    monkeypatch.setattr(TransformersBackend, "answer", original)

    outcome = execute(dataclasses.replace(config, resume=True))
    assert not outcome.interrupted
    got = pd.read_parquet(part / "results.parquet").drop(columns="run_id").sort_values(KEYS).reset_index(drop=True)
    want = full.drop(columns="run_id")
    pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6)


def test_export_writes_every_window_in_both_modes(tiny_checkpoint, tmp_path, tokenizer):
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.run.export import export_prompts

    stream = token_stream(load_corpus(), tokenizer).tokens
    exported = {}
    for mode in ("nested", "independent"):
        run(tiny_checkpoint, tmp_path / mode, windows=mode)
        assert export_prompts(tmp_path / mode, tmp_path / f"{mode}.jsonl", log=lambda *a: None) == 9
        records = [json.loads(line) for line in (tmp_path / f"{mode}.jsonl").read_text().splitlines()]
        for record in records:
            assert (
                record["token_ids"] == stream[record["offset"] : record["offset"] + record["context_length"]].tolist()
            )
        exported[mode] = sorted((r["id"], r["context_length"], r["offset"], r["text"]) for r in records)
    assert exported["nested"] == exported["independent"]
