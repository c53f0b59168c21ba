"""``evalkit run perplexity`` end to end on a tiny checkpoint: files, columns, plots, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

import cli
from evalkit.backends.transformers import TransformersBackend
from evalkit.run.evaluate import RunConfig, execute

runner = CliRunner()
APP = cli.register_tasks()


def run_cli(*args):
    return runner.invoke(APP, [str(a) for a in args])


def base_args(checkpoint, out):
    return [
        "run",
        "perplexity",
        "--model",
        checkpoint,
        "--lengths",
        "64,128",
        "--samples",
        "3",
        "--out",
        out,
        "--device",
        "cpu",
        "--quiet",
        "--dataset",
        "builtin:pydoc-topics",
    ]


def test_run_writes_every_file(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*base_args(tiny_checkpoint, out))
    assert result.exit_code == 0, result.output
    for name in [
        "results.parquet",
        "results.csv",
        "summary.csv",
        "manifest.json",
        "journal.jsonl",
        "plots/loss_vs_position.png",
        "plots/perplexity_vs_length.png",
    ]:
        assert (out / name).is_file(), name
    frame = pd.read_parquet(out / "results.parquet")
    assert list(frame.columns[:9]) == [
        "run_id",
        "task",
        "model",
        "attention",
        "context_length",
        "sample",
        "position_bin",
        "metric",
        "value",
    ]
    assert {"source", "offset"} <= set(frame.columns)
    assert set(frame.metric) == {"nll", "mean_nll", "perplexity"}
    assert sorted(frame.context_length.unique()) == [64, 128]
    # perplexity is exp(mean_nll) for every window, and mean_nll the token-weighted mean of the bins
    wide = frame[frame.metric != "nll"].pivot_table(
        index=["context_length", "sample"], columns="metric", values="value"
    )
    np.testing.assert_allclose(wide.perplexity, np.exp(wide.mean_nll), rtol=1e-9)
    bins = frame[(frame.metric == "nll") & (frame.context_length == 64) & (frame["sample"] == 0)]
    widths = bins.position_end - bins.position_bin
    assert abs(np.average(bins.value, weights=widths) - wide.loc[(64, 0), "mean_nll"]) < 1e-5
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["content_hash"].startswith("sha256:")
    assert manifest["versions"]["torch"] and manifest["seed"] == 1234 and not manifest["interrupted"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.context_length) == [64, 128] and (summary.n == 3).all() and (summary.units == 3).all()


def test_windows_recompute_from_recorded_offsets(tiny_checkpoint, tmp_path, tokenizer):
    """Any row can be recomputed from its source and offset."""
    from evalkit.core.requests import TokenLossRequest
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.models.loading import LoadOptions, load_model

    out = tmp_path / "run"
    assert run_cli(*base_args(tiny_checkpoint, out)).exit_code == 0
    frame = pd.read_parquet(out / "results.parquet")
    row = frame[(frame.metric == "mean_nll") & (frame.context_length == 128)].iloc[1]
    stream = token_stream(load_corpus("builtin:pydoc-topics"), tokenizer)
    adapter = TransformersBackend(load_model(str(tiny_checkpoint), LoadOptions(device="cpu"), log=lambda *a: None))
    window = stream.tokens[row.offset : row.offset + 128]
    assert abs(float(adapter.token_losses([TokenLossRequest(window)])[0].mean()) - row.value) < 1e-5


def test_same_seed_same_rows(tiny_checkpoint, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli(*base_args(tiny_checkpoint, a)).exit_code == 0
    assert run_cli(*base_args(tiny_checkpoint, b)).exit_code == 0
    assert run_cli(*base_args(tiny_checkpoint, c), "--seed", "7").exit_code == 0
    keep = ["context_length", "sample", "position_bin", "metric", "value", "offset"]
    fa, fb, fc = (pd.read_parquet(x / "results.parquet")[keep] for x in (a, b, c))
    pd.testing.assert_frame_equal(fa, fb)
    assert not fa.offset.equals(fc.offset)


def test_resume_after_interrupt_equals_uninterrupted(tiny_checkpoint, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert run_cli(*base_args(tiny_checkpoint, full)).exit_code == 0

    part = tmp_path / "part"
    calls = {"n": 0}
    original = TransformersBackend.answer

    def flaky(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return original(self, requests)

    monkeypatch.setattr(TransformersBackend, "answer", flaky)
    config = RunConfig(
        task="perplexity",
        model=str(tiny_checkpoint),
        out=str(part),
        device="cpu",
        quiet=True,
        batch_tokens=128,
        task_options={"lengths": "64,128", "samples": 3, "dataset": "builtin:pydoc-topics"},
    )
    outcome = execute(config)
    assert outcome.interrupted
    kept = pd.read_parquet(part / "results.parquet")
    assert 0 < kept.groupby(["context_length", "sample"]).ngroups < 6  # some, not all, samples kept
    monkeypatch.setattr(TransformersBackend, "answer", original)

    result = run_cli(*base_args(tiny_checkpoint, part), "--resume")
    assert result.exit_code == 0, result.output
    keys = ["context_length", "sample", "position_bin", "metric"]
    got = pd.read_parquet(part / "results.parquet").drop(columns="run_id").sort_values(keys).reset_index(drop=True)
    want = pd.read_parquet(full / "results.parquet").drop(columns="run_id").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6)


def test_stride_mode_scores_every_token_once(tiny_checkpoint, tmp_path, tokenizer):
    out = tmp_path / "stride"
    result = run_cli(
        "run",
        "perplexity",
        "--model",
        tiny_checkpoint,
        "--lengths",
        "128",
        "--stride",
        "64",
        "--samples",
        "5",
        "--out",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    counts = frame[frame.metric == "scored_tokens"].sort_values("sample")
    assert list(counts.value) == [127, 64, 64, 64, 64]  # first window scores all 127 targets, later ones 64 new
    summary = pd.read_csv(out / "summary.csv")
    assert summary.tokens.iloc[0] == 127 + 4 * 64


def test_strided_windows_cover_the_stream_once():
    from evalkit.data.corpus import TokenStream
    from evalkit.data.windows import strided_windows

    stream = TokenStream("t", np.arange(1000), np.array([0]))
    scored = []
    for begin, first in strided_windows(stream, 128, 50):
        scored.extend(range(begin + first, begin + 128))
    assert scored == list(range(1, 1000))


def test_several_models_one_folder_each(tiny_checkpoint, tmp_path):
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(tiny_checkpoint, other)
    out = tmp_path / "runs"
    result = run_cli(
        "run",
        "perplexity",
        "--model",
        tiny_checkpoint,
        "--model",
        other,
        "--lengths",
        "64",
        "--samples",
        "1",
        "--out",
        out,
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([tiny_checkpoint.name, "other-model"])
    models = {pd.read_parquet(p / "results.parquet").model.iloc[0] for p in out.iterdir()}
    assert models == {tiny_checkpoint.name, "other-model"}
