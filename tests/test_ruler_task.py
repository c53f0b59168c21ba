"""``evalkit run ruler`` end to end on a tiny checkpoint: rows, RULER's scores, the average, the effective length."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evalkit.core import registry
from evalkit.core.errors import ConfigError, DataError
from evalkit.core.task import TaskContext
from evalkit.report import stats
from tasks.ruler import RulerOptions, RulerTask


@pytest.fixture
def ruler_registered():
    """The plugin as pyproject.toml registers it, also where the installed metadata predates it."""
    if "ruler" not in registry.TASKS.names():
        registry.TASKS.register("ruler", RulerTask)
        yield
        registry.TASKS.unregister("ruler")
    else:
        yield


def test_options_parse_tasks_and_qa_files():
    assert (
        RulerOptions().task_names()[:2] == ["niah_single_1", "niah_single_2"] and len(RulerOptions().task_names()) == 13
    )
    assert RulerOptions(qa_dataset=["a.json,b.json", "c.json"]).qa_files() == ("a.json", "b.json", "c.json")
    with pytest.raises(ConfigError, match="unknown RULER task.*niah_single_9") as info:
        RulerOptions(tasks="niah_single_9").task_names()
    assert "did you mean 'niah_single_" in info.value.fix
    with pytest.raises(DataError, match="--qa-dataset file nowhere/squad.json does not exist"):
        RulerTask(RulerOptions(qa_dataset=["nowhere/squad.json"]), TaskContext(None, None, False, 0))
    with pytest.raises(ConfigError, match="bad --samples"):
        RulerTask(RulerOptions(samples=0), TaskContext(None, None, False, 0))


def test_mean_of_means_by_hand():
    e = stats.mean_of_means([1, 0, 1, 1, 1, 1], ["a", "a", "b", "b", "b", "b"])
    assert e.value == pytest.approx((0.5 + 1.0) / 2) and e.n == 6


def test_samples_are_exact_and_paired(tokenizer):
    task = RulerTask(
        RulerOptions(tasks="niah_single_2,niah_multivalue", lengths="520", samples=2, chat="off", fill="exact"),
        TaskContext(tokenizer, 4096, False, 5),
    )
    samples = task.samples()
    assert all(len(s.request.prompt) == 520 for s in samples)
    kinds = {s.id.rsplit("-", 1)[1] for s in samples if s.keys["ruler_task"] == "niah_single_2"}
    assert kinds == {"gen", "score"}  # one span: generation and the teacher-forced score, on the same prompt
    assert {s.id.rsplit("-", 1)[1] for s in samples if s.keys["ruler_task"] == "niah_multivalue"} == {"gen"}
    gen = {s.id: s for s in samples}
    assert np.array_equal(
        gen["niah_single_2-L520-i1-gen"].request.prompt, gen["niah_single_2-L520-i1-score"].request.prompt
    )
    assert all(s.request.max_new_tokens == 128 for s in samples if s.id.endswith("-gen"))


def _match_all(text: str, answers: list[str]) -> float:
    text = text.strip().lower()  # the tiny model's output has no control characters to turn into newlines here
    return sum(a.lower() in text for a in answers) / len(answers)


def test_ruler_end_to_end(tiny_checkpoint, tmp_path, ruler_registered):
    from evalkit.run.evaluate import RunConfig, execute

    out = tmp_path / "ruler"
    config = RunConfig(
        "ruler",
        str(tiny_checkpoint),
        {
            "tasks": "niah_single_1,niah_single_2,qa_1",
            "lengths": "300,380",
            "samples": 2,
            "threshold": "0.5",
            "fill": "exact",
        },
        out=str(out),
        device="cpu",
        quiet=True,
    )
    outcome = execute(config)
    frame = pd.read_parquet(out / "results.parquet")
    assert list(frame.columns[:8]) == [
        "run_id",
        "task",
        "model",
        "attention",
        "context_length",
        "ruler_task",
        "index",
        "metric",
    ]
    matched = frame[frame.metric == "string_match"]
    assert len(matched) == 2 * 2 * 2  # tasks x lengths x samples
    for row in matched.itertuples():
        assert row.value == _match_all(row.generated, json.loads(row.answers))
    assert set(frame[frame.metric == "greedy_correct"].value) <= {0.0, 1.0}
    assert (frame[frame.metric == "answer_logprob"].value < 0).all()

    summary = pd.read_csv(out / "summary.csv")
    per_task = summary[summary.ruler_task.isin(["niah_single_1", "niah_single_2"])]
    for row in per_task.itertuples():
        cell = matched[(matched.ruler_task == row.ruler_task) & (matched.context_length == int(row.context_length))]
        assert row.score == pytest.approx(cell.value.mean()) and row.n == 2
    average = summary[summary.ruler_task == "average"]
    assert list(average.context_length.astype(str)) == ["300", "380", "all"]
    by_length = matched.groupby(["context_length", "ruler_task"]).value.mean().groupby("context_length").mean()
    for length, value in by_length.items():
        assert average[average.context_length.astype(str) == str(length)].score.iloc[0] == pytest.approx(value)
    expected = None  # RULER: the longest length whose average, and every shorter one's, is at least the threshold
    for length, value in sorted(by_length.items()):
        if value < 0.5:
            break
        expected = length
    pooled = average[average.context_length.astype(str) == "all"].iloc[0]
    assert (pd.isna(pooled.effective_length) and expected is None) or pooled.effective_length == expected
    assert pooled.threshold == 0.5
    note = summary[summary.ruler_task == "qa_1"].note.iloc[0]
    assert note.startswith("skipped: ")  # no QA file given (or, without the QA module, no generator)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "qa_1" in manifest["ruler"]["skipped"] and manifest["ruler"]["tasks"] == ["niah_single_1", "niah_single_2"]
    for name in ("ruler_score_per_task.png", "ruler_average_vs_length.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert outcome.summary is not None


def test_nvidia_protocol_end_to_end_labels_and_export(tiny_checkpoint, tmp_path, ruler_registered):
    """--fill nvidia (the default): prompts + budget within the length, the 3-of-13 label everywhere, export."""
    from evalkit.run.evaluate import RunConfig, execute
    from evalkit.run.export import export_prompts

    out = tmp_path / "ruler-nvidia"
    config = RunConfig(
        "ruler",
        str(tiny_checkpoint),
        {"tasks": "niah_single_1,niah_multikey_2,fwe", "lengths": "1000,1300", "samples": 2},
        out=str(out),
        device="cpu",
        quiet=True,
        allow_extrapolation=True,
    )
    execute(config)
    summary = pd.read_csv(out / "summary.csv")
    average = summary[summary.ruler_task == "average"]
    assert set(average.comparable) == {"not RULER-comparable: 3 of 13 tasks"}
    pooled = average[average.context_length.astype(str) == "all"].iloc[0]
    assert "not RULER-comparable" in pooled.note
    frame = pd.read_parquet(out / "results.parquet")
    scores = frame[frame.metric == "string_match"]
    per = scores.groupby(["context_length", "ruler_task"]).value.mean().groupby("context_length").mean().sort_index()
    assert pooled.wavg_inc == pytest.approx((per.iloc[0] * 1 + per.iloc[1] * 2) / 3)  # RULER's wAvg (inc): weights 1..N
    assert pooled.wavg_dec == pytest.approx((per.iloc[0] * 2 + per.iloc[1] * 1) / 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ruler"]["protocol"] == "nvidia" and manifest["ruler"]["template"] == "base"
    assert manifest["ruler"]["comparable"] == "not RULER-comparable: 3 of 13 tasks"

    count = export_prompts(out, tmp_path / "prompts.jsonl", log=lambda *a: None)
    records = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert count == len(records) == 3 * 2 * 2
    generated = {
        (r.ruler_task, r.context_length, r.index): r for r in frame[frame.metric == "string_match"].itertuples()
    }
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    for r in records:
        assert r["protocol"] == "nvidia" and r["template"] == "base"
        assert r["prompt_ids"] == tok(r["input"] + r["answer_prefix"])["input_ids"]
        unspecial = tok(r["input"] + r["answer_prefix"], add_special_tokens=False)["input_ids"]
        assert r["length"] == len(unspecial) + r["max_new_tokens"]
        assert r["length"] <= r["context_length"]
        assert json.loads(generated[(r["task"], r["context_length"], r["index"])].answers) == r["outputs"]
