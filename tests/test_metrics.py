"""Tasks declare their metrics (evalkit.core.metrics): the run's manifest carries the declaration, and
compare, gate, plan, headline and figures read it. A task defined only here, with a metric evalkit has
never seen, is judged by compare with no edit to evalkit; RULER's string match is judged per task and
on average, its effective length comes from the task average, and its intervals respect their bounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from test_compare import write_run

from evalkit.core import registry
from evalkit.core.metrics import BINARY, HIGHER, LOG_PROB, SCORE, Metric, declared, of_task
from evalkit.core.task import Task, option
from evalkit.report import stats
from evalkit.report.compare import compare_runs

# -- a task that exists only in this module ------------------------------------------------------


@dataclass(frozen=True)
class WidgetOptions:
    widgets: int = option(20, "Widgets per variant.")
    broken: str = option("ssmax", "The variant whose widgets fail.")


class WidgetTask(Task):
    """Model-free: under the variant named by ``broken`` most widgets fail to be recalled."""

    name = "widgets"
    description = "A test-only task with a metric no evalkit module names."
    Options = WidgetOptions
    key_columns = ("widget",)
    metrics = (Metric("widget_recall", HIGHER, BINARY, headline=True, label="widgets recalled"),)

    @classmethod
    def model_free(cls, options) -> bool:
        return True

    @classmethod
    def request_kinds(cls, options) -> frozenset[str]:
        return frozenset()  # model-free: it asks no backend for anything

    def model_free_rows(self, attention):
        out = []
        for label in ("softmax", "ssmax"):
            fail = label == self.options.broken
            rows = [
                {"context_length": 256, "widget": k, "metric": "widget_recall", "value": float(not fail or k % 5 == 0)}
                for k in range(self.options.widgets)
            ]
            out.append((label, f"widgets-{label}", rows))
        return out

    def summarize(self, frame):
        return frame.groupby(["attention", "context_length"], as_index=False)["value"].mean()


@pytest.fixture
def widgets():
    registry.TASKS.register("widgets", WidgetTask)
    yield
    registry.TASKS.unregister("widgets")


def widget_run(folder):
    from evalkit.run.evaluate import RunConfig, execute

    execute(RunConfig("widgets", "none", {}, out=str(folder), quiet=True, plots=False))
    return folder


def test_a_task_defined_in_a_test_with_a_new_metric_fails_compare(widgets, tmp_path):
    shipped = {m for task in ("needle", "perplexity", "focus", "ruler") for m in of_task(task)}
    assert "widget_recall" not in shipped  # no evalkit module knows the metric
    folder = widget_run(tmp_path / "w")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["metrics"] == [WidgetTask.metrics[0].record()]  # the run writes the declaration

    c = compare_runs(folder, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    row = c.rows.set_index("metric").loc["widget_recall"]
    assert c.exit_code == 1 and bool(row.regression) and row.direction == 1
    assert row.baseline == 1.0 and row.candidate == pytest.approx(0.2)
    # 16 discordant pairs, all worse: exact McNemar's one-sided p
    assert row.p_worse == pytest.approx(binomtest(0, 16, 0.5, alternative="less").pvalue)

    # read from the manifest alone: the task need not be installed where the runs are compared
    registry.TASKS.unregister("widgets")
    assert compare_runs(folder, base_select=["attention=softmax"], cand_select=["attention=ssmax"]).exit_code == 1


def test_runs_written_before_the_declaration_fall_back_to_the_task_class(widgets, tmp_path):
    folder = widget_run(tmp_path / "old")
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["metrics"]
    path.write_text(json.dumps(manifest))
    assert declared(manifest, "widgets") == {"widget_recall": WidgetTask.metrics[0]}
    c = compare_runs(folder, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    assert c.exit_code == 1 and c.regressions.metric.tolist() == ["widget_recall"]


def test_an_undeclared_metric_is_reported_never_judged(tmp_path):
    rows = [
        {"attention": a, "context_length": 256, "widget": k, "metric": "mystery", "value": float(a == "softmax")}
        for a in ("softmax", "ssmax")
        for k in range(20)
    ]
    folder = write_run(tmp_path / "u", rows, ["widget"], "not-installed")
    c = compare_runs(folder, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    assert c.rows.direction.tolist() == [0] and not c.rows.regression.any()


def test_metric_records_round_trip_and_kinds_bound_intervals():
    m = Metric("answer_logprob", HIGHER, LOG_PROB)
    assert Metric.from_record(m.record()) == m and m.range == (-math.inf, 0.0)
    assert Metric.from_record({**m.record(), "added_later": 1}) == m  # a newer evalkit's fields are ignored
    assert Metric("x", kind=SCORE).range == (0.0, 1.0) and Metric("y", bounds=(0, None)).range == (0.0, math.inf)
    with pytest.raises(ValueError):
        Metric("z", kind="ordinal")
    e = stats.of_metric(m, [-0.01, -0.02, -2.0], None)  # a t interval over three values reaches above 0
    assert stats.mean([-0.01, -0.02, -2.0]).ci_high > 0 and e.ci_high == 0.0


# -- RULER ------------------------------------------------------------------------------------------


def ruler_rows(scores: dict, forced: dict | None = None) -> list[dict]:
    """scores: {(attention, length, task): [string_match per prompt]}; forced: {(...): [greedy_correct]}."""
    rows = []
    for (attention, length, task), values in scores.items():
        for index, value in enumerate(values):
            base = {
                "attention": attention,
                "context_length": length,
                "ruler_task": task,
                "index": index,
                "answers": f"{task}-{length}-{index}",
            }
            rows.append({**base, "metric": "string_match", "value": float(value)})
            for ok in (forced or {}).get((attention, length, task), [])[index : index + 1]:
                rows += [
                    {**base, "metric": "greedy_correct", "value": float(ok)},
                    {**base, "metric": "answer_logprob", "value": -0.5 - 0.1 * index},
                ]
    return rows


def ruler_run(folder, scores, forced=None, **kw):
    kw.setdefault("options", {"tasks": "niah_single_1,vt", "fill": "nvidia"})
    return write_run(folder, ruler_rows(scores, forced), ["ruler_task", "index"], "ruler", ("answers",), **kw)


@pytest.fixture
def ruler_registered():
    from tasks.ruler import RulerTask

    added = "ruler" not in registry.TASKS.names()
    if added:
        registry.TASKS.register("ruler", RulerTask)
    yield
    if added:
        registry.TASKS.unregister("ruler")


N = 12


def two_ruler_runs(tmp_path, vt_candidate):
    niah = [1.0] * N
    base = ruler_run(
        tmp_path / "base",
        {("softmax", 1024, "niah_single_1"): niah, ("softmax", 1024, "vt"): [1.0] * N},
        {("softmax", 1024, "niah_single_1"): niah},
    )
    cand = ruler_run(
        tmp_path / "cand",
        {("softmax", 1024, "niah_single_1"): niah, ("softmax", 1024, "vt"): vt_candidate},
        {("softmax", 1024, "niah_single_1"): niah},
    )
    return base, cand


def test_a_regression_confined_to_vt_fails_compare(ruler_registered, tmp_path):
    """vt has no greedy_correct: only its string match can show the drop; it did not fail before."""
    base, cand = two_ruler_runs(tmp_path, [0.0] * 10 + [1.0] * 2)
    c = compare_runs(base, cand)
    assert c.exit_code == 1
    rows = c.rows.set_index("metric")
    assert set(c.regressions.metric) == {"string_match", "string_match[vt]"}
    assert not rows.loc["greedy_correct"].regression and not rows.loc["string_match[niah_single_1]"].regression
    assert rows.loc["string_match[vt]"].candidate == pytest.approx(2 / 12)
    assert rows.loc["string_match"].delta == pytest.approx((2 / 12 - 1) / 2)  # the average over the two tasks


def test_string_match_cells_average_and_per_task_are_judged_with_p_values(ruler_registered, tmp_path):
    graded = [1.0, 0.5, 1.0, 0.75] * 3  # vt's fraction of references found, some partial
    base, cand = two_ruler_runs(tmp_path, [v - 0.25 for v in graded])
    c = compare_runs(base, cand)
    cells = c.rows[c.rows.metric.str.startswith("string_match")].set_index("metric")
    assert set(cells.index) == {"string_match", "string_match[niah_single_1]", "string_match[vt]"}
    assert (cells.direction == 1).all() and cells.p_worse.notna().all() and cells.p_adjusted.notna().all()
    vt = cells.loc["string_match[vt]"]
    assert "paired t" in vt.test and "sign-flip" in vt.test
    # every prompt loses exactly 0.25: zero variance, so the exact sign flip decides: 1 / 2^12
    assert vt.p_worse == pytest.approx(0.5**N) and bool(vt.regression)
    assert cells.loc["string_match[niah_single_1]"].p_worse == 1.0  # no change


def test_ruler_effective_length_comes_from_the_task_average(ruler_registered, tmp_path):
    """niah's greedy_correct stays perfect, vt's string match collapses at 2k: the average (as summary.csv
    computes it) drops below 0.856 at 2k, the pooled greedy_correct never would."""
    from tasks.ruler import RulerOptions, RulerTask

    scores, forced = {}, {}
    for length in (1024, 2048):
        scores[("softmax", length, "niah_single_1")] = forced[("softmax", length, "niah_single_1")] = [1.0] * N
        scores[("softmax", length, "vt")] = [1.0] * N if length == 1024 else [0.0] * N
    folder = ruler_run(tmp_path / "r", scores, forced)
    c = compare_runs(folder, folder)
    lengths = c.lengths.set_index("side")
    assert (lengths.metric == "string_match").all()
    assert lengths.loc["baseline", "effective_length"] == 1024
    frame = pd.read_parquet(folder / "results.parquet")
    task = RulerTask(RulerOptions(tasks="niah_single_1,vt"), _context())
    summary = task.summarize(frame)
    pooled = summary[(summary.ruler_task == "average") & (summary.context_length.astype(str) == "all")].iloc[0]
    assert lengths.loc["baseline", "effective_length"] == pooled.effective_length
    assert lengths.loc["baseline", "pessimistic"] == _int(pooled.effective_length_ci_low)
    assert lengths.loc["baseline", "optimistic"] == _int(pooled.effective_length_ci_high)


def _int(v):
    return pd.NA if pd.isna(v) else int(v)


def _context():
    from evalkit.core.task import TaskContext

    return TaskContext(None, None, True, 1234)


def test_ruler_answer_logprob_interval_stays_at_or_below_zero_and_table_shows_dashes():
    from tasks.ruler import RulerOptions, RulerTask

    rows = []
    for index, lp in enumerate([-0.001, -0.002, -3.0, -0.001]):  # t's upper end would be about +1.9
        base = {"attention": "softmax", "context_length": 1024, "ruler_task": "niah_single_1", "index": index}
        rows += [
            {**base, "metric": "string_match", "value": 1.0, "seed": 1234},
            {**base, "metric": "greedy_correct", "value": 1.0, "seed": 1234},
            {**base, "metric": "answer_logprob", "value": lp, "seed": 1234},
        ]
    frame = pd.DataFrame(rows)
    summary = RulerTask(RulerOptions(tasks="niah_single_1"), _context()).summarize(frame)
    row = summary[summary.ruler_task == "niah_single_1"].iloc[0]
    unclipped = stats.mean(frame[frame.metric == "answer_logprob"].value)
    assert unclipped.ci_high > 0 and row.answer_logprob_ci_high == 0.0
    assert row.answer_logprob_ci_low == pytest.approx(unclipped.ci_low)
    table = stats.compact(summary)  # the terminal's table
    per_task = table[table.ruler_task == "niah_single_1"].iloc[0]
    assert per_task.comparable == "-" and "nan" not in " ".join(map(str, table.to_numpy().ravel()))


def test_shipped_tasks_declare_their_headline_and_exp_pairs():
    from evalkit.report.headline import headline_metrics

    ppl = of_task("perplexity")
    assert ppl["mean_nll"].exp == "perplexity" and ppl["key_nll"].exp == "longppl" and ppl["perplexity"].headline
    assert {m.column for m in of_task("needle").values() if m.headline} == {"accuracy", "answer_logprob"}
    assert of_task("ruler")["string_match"].effective_length == "ruler_task"
    summary = pd.DataFrame(
        {
            "attention": ["softmax"],
            "context_length": [1024],
            "mean_nll": [2.0],
            "mean_nll_ci_low": [1.9],
            "mean_nll_ci_high": [2.1],
            "perplexity": [np.exp(2.0)],
            "perplexity_ci_low": [np.exp(1.9)],
            "perplexity_ci_high": [np.exp(2.1)],
        }
    )
    assert headline_metrics(summary, "perplexity") == {"perplexity@1024": pytest.approx(np.exp(2.0))}


def test_task_hooks_are_declared_with_defaults():
    from tasks.perplexity import PerplexityOptions, PerplexityTask

    class Bare(Task):
        name, description, Options, key_columns = "bare", "", WidgetOptions, ()

    bare = Bare(WidgetOptions(), _context())
    assert Bare.model_free(WidgetOptions()) is False and bare.export_records() is None
    assert bare.auxiliary_runs() == [] and bare.auxiliary == {} and Bare.metrics == ()
    with pytest.raises(NotImplementedError):
        bare.model_free_rows({})
    # LongPPL's evaluator is the perplexity task's own declaration: which model, which options, which rows
    options = PerplexityOptions(lengths="8k", metric="longppl", evaluator="other-ckpt/")
    (aux,) = PerplexityTask(options, _context()).auxiliary_runs()
    assert (aux.name, aux.model, aux.task_options, aux.metrics) == (
        "evaluator",
        "other-ckpt/",
        {"evaluator": None},
        ("token_nll", "short_nll"),
    )
    assert aux.same_tokenizer
    assert PerplexityTask(PerplexityOptions(lengths="8k", metric="longppl"), _context()).auxiliary_runs() == []
