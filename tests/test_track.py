"""``evalkit track`` on three saved tiny checkpoints: the step column, resume, figures with bands,
``plot --x step`` and ``compare`` across two steps."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from evalkit.core.errors import ConfigError
from evalkit.run.track import find_checkpoints
from tests.conftest import make_llama

runner = CliRunner()
APP = cli.register_tasks()
GRID = [
    "--task",
    "needle",
    "--lengths",
    "128,192",
    "--set",
    "depths=0,100",
    "--trials",
    "2",
    "--device",
    "cpu",
    "--quiet",
]


def _save(folder, tokenizer, seed, step=None):
    make_llama(len(tokenizer), seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ckpts")
    for seed, step in ((1, 100), (2, 200), (3, 300)):
        _save(root / f"checkpoint-{step}", tokenizer, seed)
    return root


def test_steps_from_names_and_trainer_state(series, tmp_path, tokenizer):
    found = find_checkpoints([str(series / "checkpoint-*")])
    assert [c.step for c in found] == [100, 200, 300] and {c.series for c in found} == {series.name}
    odd = _save(tmp_path / "final", tokenizer, 4, step=350)  # no step in the name: trainer_state.json's
    assert find_checkpoints([str(odd)])[0].step == 350
    (tmp_path / "nostep").mkdir()
    with pytest.raises(ConfigError, match="cannot tell the training step"):
        find_checkpoints([str(tmp_path / "nostep")])


def test_track_resume_figures_and_compare(series, tmp_path, tokenizer):
    out = tmp_path / "track"
    first = [str(series / "checkpoint-100"), str(series / "checkpoint-200")]
    result = runner.invoke(APP, ["track", *first, *GRID, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 run(s) evaluated, 0 done before" in result.output

    again = runner.invoke(APP, ["track", *first, *GRID, "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output
    changed = [("3" if a == "2" else a) for a in GRID]  # --trials 3
    other = runner.invoke(APP, ["track", *first, *changed, "--out", str(out), "--resume"])
    assert other.exit_code == 2 and "other settings" in other.output

    # resume with a third checkpoint: the two finished runs are skipped, the new one evaluated
    before = (out / series.name / "step-100" / "needle" / "results.parquet").stat().st_mtime_ns
    result = runner.invoke(APP, ["track", str(series / "checkpoint-*"), *GRID, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "1 run(s) evaluated, 2 done before" in result.output
    assert (out / series.name / "step-100" / "needle" / "results.parquet").stat().st_mtime_ns == before

    rows = pd.read_parquet(out / "track.parquet")
    assert sorted(rows.step.unique()) == [100, 200, 300]
    assert list(rows.columns[:7]) == ["run_id", "task", "model", "series", "step", "attention", "context_length"]
    summary = pd.read_csv(out / "track_summary.csv")
    assert {"step", "series", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "effective_length"} <= set(
        summary.columns
    )
    for step in (100, 200, 300):  # each step's numbers are that run's own summary.csv
        own = pd.read_csv(out / series.name / f"step-{step}" / "needle" / "summary.csv")
        assert summary[summary.step == step].answer_logprob.tolist() == pytest.approx(own.answer_logprob.tolist())

    points = pd.read_csv(out / "figures" / "needle_accuracy_vs_step.csv")
    assert sorted(points.step.unique()) == [100, 200, 300] and sorted(points.context_length.unique()) == [128, 192]
    assert points[["ci_low", "ci_high"]].notna().all().all() and (points.ci_low <= points.value).all()
    assert (points.value <= points.ci_high).all() and (points.ci_high > points.ci_low).all()  # bands, not lines
    assert (out / "figures" / "needle_accuracy_vs_step.png").stat().st_size > 10_000
    assert (out / "figures" / "needle_effective_length_vs_step.png").is_file()

    fig = tmp_path / "fig"
    result = runner.invoke(APP, ["plot", str(out), "--x", "step", "--metric", "answer_logprob", "--out", str(fig)])
    assert result.exit_code == 0, result.output
    logprob = pd.read_csv(fig / "needle_answer_logprob_vs_step.csv")
    own = pd.read_csv(out / series.name / "step-200" / "needle" / "summary.csv")
    at = logprob[(logprob.step == 200) & (logprob.context_length == 128)].value.iloc[0]
    assert at == pytest.approx(own[own.context_length.astype(str) == "128"].answer_logprob.iloc[0])

    result = runner.invoke(
        APP, ["compare", str(out), "--baseline", "step=100", "--candidate", "step=300", "--format", "json"]
    )
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.output)
    assert (
        report["summary"]["baseline_model"] == "checkpoint-100"
        and report["summary"]["candidate_model"] == "checkpoint-300"
    )
    assert "paired" in report["summary"]["pairing"] and "unpaired" not in report["summary"]["pairing"]
