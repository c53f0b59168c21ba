"""Rows carry their provenance; ``evalkit export`` writes prompts that plain transformers can score."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cli
from evalkit.data.corpus import load_corpus, separator_id, token_stream

runner = CliRunner()
APP = cli.register_tasks()
KEYS = ["context_length", "depth", "trial"]


def invoke(*args):
    result = runner.invoke(APP, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def run_task(task, model, out, *extra):
    return invoke("run", task, "--model", model, "--device", "cpu", "--quiet", "--out", out, "--seed", 7, *extra)


@pytest.fixture(scope="module")
def needle_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "needle"
    run_task("needle", tiny_checkpoint, out, "--lengths", "160,224", "--depths", "0:100:50", "--trials", "2")
    prompts = out.parent / "prompts.jsonl"
    invoke("export", out, "--prompts", prompts)
    return out, [json.loads(line) for line in prompts.read_text().splitlines()], prompts


def test_needle_rows_carry_seed_span_depth_and_haystack_offset(needle_run, tokenizer):
    out, records, _ = needle_run
    rows = pd.read_parquet(out / "results.parquet")
    assert (rows.seed == 7).all() and (rows.haystack == "corpus").all()
    assert (rows.haystack_source == "builtin:pydoc-topics").all()
    # the haystack is the corpus stream (separators read as newlines) from haystack_offset, up to the needle
    stream = token_stream(load_corpus(), tokenizer).tokens
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    stream = np.where(stream == separator_id(tokenizer), newline, stream)
    by_key = {tuple(r[k] for k in KEYS): r for r in records}
    acc = rows[rows.metric == "greedy_correct"]
    assert len(acc) == len(records) == 2 * 3 * 2
    for row in acc.itertuples():
        prompt = np.array(by_key[(row.context_length, row.depth, row.trial)]["prompt_ids"])
        before = np.take(stream, np.arange(row.haystack_offset, row.haystack_offset + row.needle_start), mode="wrap")
        assert (prompt[: row.needle_start] == before).all()
        needle = tokenizer.decode(prompt[row.needle_start : row.needle_end])
        assert needle.strip().startswith("The pass key is " + row.answer)
        assert abs(row.actual_depth - 100 * row.needle_start / row.haystack_tokens) < 0.01


def test_exported_prompts_recompute_the_rows_with_plain_transformers(needle_run, tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    out, records, _ = needle_run
    rows = pd.read_parquet(out / "results.parquet").set_index(KEYS + ["metric"])["value"]
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    for record in records:
        prompt, answer = record["prompt_ids"], record["answer_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]  # (A, V)
        logprob = torch.log_softmax(logits, -1)[torch.arange(len(answer)), answer].sum().item()
        greedy = logits.argmax(-1).tolist() == answer
        key = tuple(record[k] for k in KEYS)
        assert rows[key + ("greedy_correct",)] == float(greedy)
        assert abs(rows[key + ("answer_logprob",)] - logprob) < 1e-5
        assert record["seed"] == 7 and record["id"] == "L{}-d{:g}-t{}".format(*key)


def test_exported_prompts_fed_back_reproduce_the_scores(needle_run, tiny_checkpoint, tmp_path):
    out, _, prompts = needle_run
    again = tmp_path / "again"
    run_task("needle", tiny_checkpoint, again, "--samples-file", prompts)
    first, second = (
        pd.read_parquet(f / "results.parquet").set_index(KEYS + ["metric"])["value"].sort_index() for f in (out, again)
    )
    assert first.index.equals(second.index)
    assert np.allclose(first, second, atol=1e-5, rtol=0)


def test_focus_rows_carry_span_depth_and_seed(tiny_checkpoint, tmp_path):
    out = tmp_path / "focus"
    run_task("focus", tiny_checkpoint, out, "--lengths", "160", "--depths", "50", "--trials", "1", "--layers", "0")
    rows = pd.read_parquet(out / "results.parquet")
    assert (rows.seed == 7).all() and (rows.needle_end > rows.needle_start).all()
    # the needle sits at the sentence boundary nearest 50%: in an 85-token haystack that moves with the
    # Python whose pydoc topics fill it (3.11.2 puts it at 75%), so only that one depth is recorded
    assert rows.actual_depth.between(0, 100).all() and rows.actual_depth.nunique() == 1
    assert rows.haystack_offset.notna().all()
    invoke("export", out, "--prompts", tmp_path / "focus.jsonl")
    (record,) = (json.loads(line) for line in (tmp_path / "focus.jsonl").read_text().splitlines())
    assert (record["needle_start"], record["needle_end"]) == (rows.needle_start.iloc[0], rows.needle_end.iloc[0])


def test_perplexity_windows_export_and_seed(tiny_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "ppl"
    run_task(
        "perplexity", tiny_checkpoint, out, "--lengths", "64", "--samples", "2", "--dataset", "builtin:pydoc-topics"
    )
    rows = pd.read_parquet(out / "results.parquet")
    assert (rows.seed == 7).all()
    invoke("export", out, "--prompts", tmp_path / "windows.jsonl")
    records = [json.loads(line) for line in (tmp_path / "windows.jsonl").read_text().splitlines()]
    stream = token_stream(load_corpus(), tokenizer).tokens
    assert len(records) == 2
    for record in records:
        assert record["token_ids"] == stream[record["offset"] : record["offset"] + 64].tolist()


def test_manifest_hashes_each_part_and_records_a_dirty_flag(needle_run, tiny_checkpoint):
    import hashlib

    out, _, _ = needle_run
    manifest = json.loads((out / "manifest.json").read_text())
    hashes = manifest["hashes"]
    assert set(hashes) == {"weights", "config", "tokenizer", "dataset"} and len(set(hashes.values())) == 4
    config = hashlib.sha256((tiny_checkpoint / "config.json").read_bytes()).hexdigest()[:16]
    assert hashes["config"] == "sha256:" + config and hashes["weights"] == manifest["model"]["content_hash"]
    assert hashes["dataset"] == "builtin:" + load_corpus().fingerprint
    assert isinstance(manifest["git_dirty"], bool) or manifest["git_revision"] is None


def test_samples_file_hash_and_export_errors(tiny_checkpoint, tmp_path):
    samples = tmp_path / "mine.jsonl"
    samples.write_text(json.dumps({"prompt": "Remember apples. " * 8 + "It was", "answer": "apples"}) + "\n")
    run_task("needle", tiny_checkpoint, tmp_path / "file", "--samples-file", samples)
    import hashlib

    manifest = json.loads((tmp_path / "file" / "manifest.json").read_text())
    assert manifest["hashes"]["dataset"] == "sha256:" + hashlib.sha256(samples.read_bytes()).hexdigest()[:16]
    result = runner.invoke(APP, ["export", str(tmp_path), "--prompts", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_token_id_records_are_checked(tokenizer, tmp_path):
    from evalkit.core.errors import DataError
    from evalkit.data.haystack import load_samples_file

    path = tmp_path / "ids.jsonl"
    good = {
        "prompt": "x",
        "answer": "7",
        "prompt_ids": [5, 6, 7],
        "answer_ids": [8],
        "needle_start": 1,
        "needle_end": 2,
        "depth": 50,
        "actual_depth": 33.3,
        "trial": 4,
    }
    path.write_text(json.dumps(good) + "\n")
    (sample,) = load_samples_file(path, tokenizer)
    assert (
        sample.prompt_ids.tolist() == [5, 6, 7]
        and sample.answer_ids.tolist() == [8]
        and sample.needle_spans == ((1, 2),)
    )
    assert (sample.depth, sample.actual_depth, sample.trial, sample.context_length) == (50, 33.3, 4, 3)
    with pytest.raises(DataError, match="used verbatim"):
        load_samples_file(path, tokenizer, chat="on")
    for bad, message in (
        ({"prompt_ids": [5, 10**6]}, "line 1: 'prompt_ids' must be a non-empty list of token ids below 300"),
        ({"answer_ids": []}, "'answer_ids' must be"),
        ({"needle_end": 9}, "needle span [1, 9)"),
    ):
        path.write_text(json.dumps({**good, **bad}) + "\n")
        with pytest.raises(DataError, match=re.escape(message)):
            load_samples_file(path, tokenizer)
