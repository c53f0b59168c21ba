"""LongPPL: the paper's key-token rule on hand-made losses, and evalkit's key tokens and LongPPL against
an independent recomputation (plain forward passes on the recorded windows) on a tiny random model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from evalkit.report import longppl
from evalkit.run.evaluate import RunConfig, execute

SHORT, STRIDE = 32, 16
# a random model's losses barely depend on context: thresholds that make some of its tokens key
LSD, LOSS = 0.02, 6.0


def test_rule_on_hand_made_losses():
    short = np.array([5.0, 4.0, 4.0, 3.9, 2.5, 6.0, 1.0])
    full = np.array([1.0, 2.0, 1.9, 1.9, 0.4, 3.0, 0.5])
    # LSD:          4.0  2.0  2.1  2.0  2.1  3.0  0.5 ; strict: LSD > 2 and full < 2 (PKU-ML/LongPPL find_key_token)
    assert longppl.key_mask(short, full).tolist() == [True, False, True, False, True, False, False]
    assert longppl.key_mask(short, full, lsd_threshold=0.4, loss_threshold=3.1).tolist() == [True] * 7


def test_short_windows_follow_the_paper_plan():
    # the paper: starts range(0, n - trunc, stride), each trunc + stride tokens, scoring its last stride
    # positions (the last cut at the end); the start 0 is the full window's own prefix, left out
    assert longppl.short_windows(20, 8, 4) == [(4, 16, 12), (8, 20, 16)]
    assert longppl.short_windows(22, 8, 4) == [(4, 16, 12), (8, 20, 16), (12, 22, 20)]
    assert longppl.short_windows(8, 8, 4) == [] and longppl.short_windows(12, 8, 4) == []
    for n, s, k in [
        (8192, 4096, 1024),
        (100, 32, 16),
        (97, 20, 7),
    ]:  # every position >= s scored once, context in [s, s + k)
        scored = [p for b, e, first in longppl.short_windows(n, s, k) for p in range(first, e)]
        assert scored == list(range(s + k, n)) and all(s <= p - (p - s) // k * k for p in scored)
    assert longppl.short_context_tokens(8192, 4096, 1024) == 3 * 5120


def test_longppl_from_hand_made_rows():
    class Options:
        lsd_threshold, loss_threshold = 2.0, 2.0

    rows = []
    full = {("a", 0): [1.0, 0.5, 3.0], ("a", 1): [1.5, 0.1, 0.2], ("b", 0): [2.0, 1.0, 1.0], ("b", 1): [0.7, 0.3, 0.9]}
    short = {0: [3.5, 1.0, 6.0], 1: [3.6, 2.2, 0.3]}  # the evaluator "a": keys (0, 4), (1, 4), (1, 5)
    for (variant, sample), values in full.items():
        rows += [
            {
                "attention": variant,
                "context_length": 8,
                "sample": sample,
                "position": 4 + i,
                "metric": "token_nll",
                "value": v,
            }
            for i, v in enumerate(values)
        ]
    rows += [
        {"attention": "a", "context_length": 8, "sample": s, "position": 4 + i, "metric": "short_nll", "value": v}
        for s, values in short.items()
        for i, v in enumerate(values)
    ]
    rows += [
        {"attention": v, "context_length": 8, "sample": s, "position": None, "metric": "mean_nll", "value": 1.0}
        for v in "ab"
        for s in (0, 1)
    ]
    frame = longppl.derive(pd.DataFrame(rows), None, Options())
    keys = frame[frame.metric == "key_nll"]
    assert sorted(keys[keys.attention == "a"][["sample", "position"]].itertuples(index=False, name=None)) == [
        (0, 4),
        (1, 4),
        (1, 5),
    ]
    b = keys[keys.attention == "b"].sort_values(["sample", "position"])
    assert b.value.tolist() == [2.0, 0.7, 0.3] and b.lsd.round(6).tolist() == [2.5, 2.1, 2.1]  # b scored on a's keys
    cols = longppl.summary_columns(frame[frame.attention == "b"], 8, ("context_length", "sample"))
    assert cols["key_tokens"] == 3 and cols["key_share"] == 3 / 14 and cols["key_windows"] == 2
    assert cols["longppl"] == pytest.approx(math.exp((2.0 + 0.7 + 0.3) / 3))
    marked = frame[frame.metric == "token_nll"]
    assert int(marked.key.sum()) == 6  # both variants' token rows carry the evaluator's key status


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from evalkit.data.corpus import load_corpus

    docs = load_corpus("builtin:pydoc-topics").documents
    path = tmp_path_factory.mktemp("longppl") / "doc.txt"
    path.write_text("\n\n".join(docs[10:16]))  # one long document
    return path


def run(checkpoint, out, text_file, attention=({"name": "softmax"},), **extra):
    options = {
        "lengths": "64,128",
        "samples": 2,
        "dataset": str(text_file),
        "metric": "longppl",
        "short_context": str(SHORT),
        "short_stride": str(STRIDE),
        "lsd_threshold": LSD,
        "loss_threshold": LOSS,
        **extra,
    }
    config = RunConfig(
        "perplexity",
        str(checkpoint),
        task_options=options,
        attention=attention,
        out=str(out),
        device="cpu",
        dtype="float32",
        quiet=True,
    )
    return execute(config)


def naive(checkpoint, tokens: np.ndarray):
    """Full-context NLL of every position, and each position p >= SHORT's NLL from its own pass over the
    paper's short context (tokens from STRIDE * floor((p - SHORT) / STRIDE) to p)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = torch.from_numpy(tokens).long()[None]
    with torch.no_grad():
        full = F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="none").numpy()
        short = {}
        for p in range(SHORT, len(tokens)):
            begin = (p - SHORT) // STRIDE * STRIDE
            logits = model(input_ids=ids[:, begin : p + 1]).logits[0, -2]
            short[p] = float(F.cross_entropy(logits[None], ids[0, p : p + 1]))
    return {p: float(full[p - 1]) for p in range(1, len(tokens))}, short


def test_key_tokens_and_longppl_match_a_naive_recomputation(tiny_checkpoint, tmp_path, text_file):
    from transformers import AutoTokenizer

    from evalkit.data.corpus import load_corpus, token_stream

    outcome = run(tiny_checkpoint, tmp_path / "run", text_file)
    frame, summary = outcome.frame, outcome.summary
    stream = token_stream(load_corpus(str(text_file)), AutoTokenizer.from_pretrained(tiny_checkpoint))
    windows = frame[frame.metric == "mean_nll"].drop_duplicates("sample")
    expected_keys, expected_nll = set(), {64: [], 128: []}
    for sample, offset in zip(windows["sample"], windows["offset"]):
        full, short = naive(tiny_checkpoint, stream.tokens[offset : offset + 128])
        for p in short:
            if short[p] - full[p] > LSD and full[p] < LOSS:
                for length in (64, 128):
                    if p < length:
                        expected_keys.add((length, int(sample), p))
                        expected_nll[length].append(full[p])
    keys = frame[frame.metric == "key_nll"]
    got = set(keys[["context_length", "sample", "position"]].astype(int).itertuples(index=False, name=None))
    assert got == expected_keys and 0 < len(got) < 2 * (128 - SHORT)  # some tokens key, not all
    for length in (64, 128):
        row = summary[summary.context_length == length].iloc[0]
        assert row.key_tokens == len(expected_nll[length])
        assert row.longppl == pytest.approx(math.exp(np.mean(expected_nll[length])), rel=1e-6)
        assert row.longppl_ci_low <= row.longppl <= row.longppl_ci_high
    marked = frame[frame.metric == "token_nll"]
    assert int(marked.key.sum()) == len(got)
    manifest = json.loads((outcome.folder / "manifest.json").read_text())
    assert (
        manifest["longppl"]["short_context"] == SHORT and manifest["token_stream"]["windows"]["documents"] == "inside"
    )


def row_keys(outcome, length):
    return int(outcome.summary.set_index(["attention", "context_length"]).loc[("softmax", length), "key_tokens"])


def test_variants_are_scored_on_the_same_key_tokens_and_compare_pairs_them(tiny_checkpoint, tmp_path, text_file):
    from evalkit.report.compare import compare_runs

    attention = ({"name": "softmax"}, {"name": "ssmax", "s": 0.43})
    outcome = run(tiny_checkpoint, tmp_path / "two", text_file, attention=attention)
    frame = outcome.frame
    shorts = frame[frame.metric == "short_nll"]
    assert set(shorts.attention) == {"softmax"}  # the evaluator's passes run once, under the first variant
    keys = frame[frame.metric == "key_nll"]
    at = ["context_length", "sample", "position"]
    soft, ssmax = (keys[keys.attention == a].sort_values(at) for a in ("softmax", "ssmax"))
    assert soft[at].to_numpy().tolist() == ssmax[at].to_numpy().tolist() and len(soft)
    assert not np.allclose(soft.value, ssmax.value)  # each variant's own loss on the shared key tokens
    alone = run(tiny_checkpoint, tmp_path / "one", text_file)  # same windows, softmax alone: same keys and LongPPL
    pd.testing.assert_series_equal(
        alone.summary.longppl, outcome.summary[outcome.summary.attention == "softmax"].longppl
    )
    c = compare_runs(outcome.folder, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    cells = c.rows.set_index(["context_length", "metric"])
    assert bool(cells.loc[(128, "key_nll"), "paired"]) and bool(cells.loc[(128, "longppl"), "paired"])
    # key tokens pair one by one, clustered by window: 2 windows, however many key tokens
    assert cells.loc[(128, "key_nll"), "units"] == 2 and cells.loc[(128, "key_nll"), "pairs"] == row_keys(outcome, 128)
    row = outcome.summary.set_index(["attention", "context_length"])
    assert cells.loc[(128, "longppl"), "candidate"] == pytest.approx(row.loc[("ssmax", 128), "longppl"])
    # fewer answers than samples x variants, and one completeness rule: track's resume, compare and gate agree
    from evalkit.run.track import is_finished, tag_run
    from evalkit.store.run_folder import load_run

    manifest = json.loads((outcome.folder / "manifest.json").read_text())
    assert manifest["planned_answers"] == manifest["finished_samples"] < 2 * manifest["samples"]
    assert load_run(outcome.folder).complete and all(ch["passed"] for ch in c.checks if "complete" in ch["check"])
    tag_run(outcome.folder, 1, "ckpts")
    assert is_finished(outcome.folder)  # was False: a track resume reran this finished run


def test_bench_reports_the_cost_over_perplexity(tiny_checkpoint, text_file):
    from evalkit.bench.longppl import bench_longppl

    frame = bench_longppl(
        str(tiny_checkpoint),
        "128",
        "cpu",
        "float32",
        samples=1,
        short_context=str(SHORT),
        short_stride=str(STRIDE),
        rounds=1,
        dataset=str(text_file),
    ).set_index("metric")
    extra = longppl.short_context_tokens(128, SHORT, STRIDE)  # windows at 16, 32, .., 80, 48 tokens each
    assert extra == 5 * 48 and frame.loc["longppl", "tokens_computed"] == 128 + extra
    assert frame.loc["longppl", "tokens_vs_perplexity"] == round((128 + extra) / 128, 3)
    assert frame.loc["perplexity", "time_vs_perplexity"] == 1.0 and frame.loc["longppl", "seconds_per_run"] > 0


def test_an_evaluator_checkpoint_chooses_the_keys_and_another_tokenizer_is_refused(
    tiny_checkpoint, tmp_path, text_file
):
    import shutil

    from typer.testing import CliRunner

    import cli
    from tests.conftest import make_llama, make_tokenizer

    copy = tmp_path / "copy"  # the same weights and tokenizer: the evaluator's keys are the model's own
    shutil.copytree(tiny_checkpoint, copy)
    self_chosen = run(tiny_checkpoint, tmp_path / "self", text_file).frame
    outcome = run(tiny_checkpoint, tmp_path / "ext", text_file, evaluator=str(copy))
    at = ["context_length", "sample", "position"]

    def keys(f):
        return sorted(f.loc[f.metric == "key_nll", at].astype(int).itertuples(index=False, name=None))

    assert keys(outcome.frame) == keys(self_chosen) and len(keys(self_chosen))
    assert not (outcome.frame.metric == "short_nll").any()  # the evaluator's run holds them
    assert (tmp_path / "ext-evaluator" / "results.parquet").is_file()

    other = tmp_path / "other"
    tokenizer = make_tokenizer(vocab_size=280)
    make_llama(len(tokenizer)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    result = CliRunner().invoke(
        cli.register_tasks(),
        [
            "run",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--dataset",
            str(text_file),
            "--lengths",
            "64",
            "--samples",
            "1",
            "--metric",
            "longppl",
            "--short-context",
            "32",
            "--evaluator",
            str(other),
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(tmp_path / "refused"),
        ],
    )
    assert (
        result.exit_code == 2 and "another tokenizer" in result.output and len(result.output.strip().splitlines()) == 1
    )
    assert not (tmp_path / "refused-evaluator").exists()
