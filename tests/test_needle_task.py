"""``evalkit run needle`` end to end on a tiny checkpoint."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()


def run_needle(model, out, *extra):
    args = [
        "run",
        "needle",
        "--model",
        str(model),
        "--lengths",
        "192,256",
        "--depths",
        "0:100:50",
        "--trials",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        *map(str, extra),
    ]
    return runner.invoke(APP, args)


def test_needle_grid_rows_summary_and_plots(tiny_checkpoint, tmp_path):
    out = tmp_path / "needle"
    result = run_needle(tiny_checkpoint, out, "--attention", "softmax,ssmax", "--ssmax-s", "0.5")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert list(frame.columns[:9]) == [
        "run_id",
        "task",
        "model",
        "attention",
        "context_length",
        "depth",
        "trial",
        "needle",
        "metric",
    ]
    assert set(frame.metric) == {"greedy_correct", "answer_logprob", "answer_mean_logprob", "answer_rank"}
    acc = frame[frame.metric == "greedy_correct"]
    assert len(acc) == 2 * 3 * 2 * 2  # lengths x depths x trials x variants
    assert set(acc.value) <= {0.0, 1.0}
    assert (frame[frame.metric == "answer_logprob"].value < 0).all()
    assert (frame[frame.metric == "answer_rank"].value >= 1).all()
    # the same needles for both variants
    keys = ["context_length", "depth", "trial", "answer", "needle_start"]
    soft, ss = (acc[acc.attention == a][keys].sort_values(keys).reset_index(drop=True) for a in ("softmax", "ssmax"))
    pd.testing.assert_frame_equal(soft, ss)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.context_length.astype(str)) == ["192", "256", "all"] * 2
    overall = summary[(summary.attention == "softmax") & (summary.context_length == "all")].accuracy.iloc[0]
    assert abs(overall - acc[acc.attention == "softmax"].value.mean()) < 1e-12
    for name in ["needle_heatmap.png", "accuracy_vs_length.png", "answer_logprob_vs_length.png"]:
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_generate_scoring_and_samples_file(tiny_checkpoint, tmp_path, tokenizer):
    out = tmp_path / "gen"
    result = run_needle(
        tiny_checkpoint,
        out,
        "--scoring",
        "generate",
        "--needle",
        "kv",
        "--lengths",
        "300",
        "--depths",
        "50",
        "--trials",
        "1",
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.metric) == {"exact_match", "contains"} and "generated" in frame.columns

    samples = tmp_path / "mine.jsonl"
    samples.write_text(
        "\n".join(
            json.dumps(
                {"prompt": f"Remember {w}. " * 10 + "What was it? It was", "answer": w, "needle": f"Remember {w}."}
            )
            for w in ["apples", "pears"]
        )
        + "\n"
    )
    result = run_needle(tiny_checkpoint, tmp_path / "file", "--samples-file", samples)
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "file" / "results.parquet")
    assert sorted(rows[rows.metric == "greedy_correct"].answer) == ["apples", "pears"]


def test_needle_bad_input(tiny_checkpoint, tmp_path):
    result = run_needle(tiny_checkpoint, tmp_path / "o", "--needle", "haystack")
    assert result.exit_code == 2 and "--needle" in result.output
    result = run_needle(tiny_checkpoint, tmp_path / "o2", "--lengths", "16")
    assert result.exit_code == 2 and "16" in result.output, result.output
    result = run_needle(tiny_checkpoint, tmp_path / "o3", "--depths", "0:150:50")
    assert result.exit_code == 2 and "0..100" in result.output


def test_greedy_correct_equals_generation_outcome(tiny_checkpoint, tmp_path, tokenizer):
    """For every sample of a small grid, the one-pass verdict equals what greedy generation does."""
    score, gen = tmp_path / "score", tmp_path / "gen"
    common = ["--lengths", "192", "--depths", "0:100:50", "--trials", "2", "--needle", "kv", "--digits", "2"]
    assert run_needle(tiny_checkpoint, score, *common).exit_code == 0
    assert run_needle(tiny_checkpoint, gen, *common, "--scoring", "generate", "--max-new-tokens", "6").exit_code == 0
    a = pd.read_parquet(score / "results.parquet")
    b = pd.read_parquet(gen / "results.parquet")
    a = a[a.metric == "greedy_correct"].set_index(["depth", "trial"]).sort_index()
    b = b[b.metric == "contains"].set_index(["depth", "trial"]).sort_index()
    starts = [g.lstrip().startswith(ans) for g, ans in zip(b.generated, a.answer)]
    assert list(a.value.astype(bool)) == starts
