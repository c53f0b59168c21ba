"""evalkit.compare and evalkit.gate on small run folders written in the test.

The folders use the real runs' column layout (common columns, task keys between context_length
and metric, provenance after value), so the key detection is exercised as in production.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from evalkit.compare import Tolerance, compare_runs, to_json, to_junit, to_markdown, to_rich_table
from evalkit.errors import ConfigError, ResultsError
from evalkit.gate import check_gates, load_gates
from evalkit.gate import to_junit as gate_junit
from evalkit.gate import to_markdown as gate_markdown

BINS = (1, 2, 4, 8)


def write_run(folder, rows: list[dict], keys: list[str], task: str, provenance: tuple[str, ...] = ()):
    """A run folder as `evalkit run` writes it: results.parquet in the documented order + manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows).assign(run_id=folder.name, task=task, model="tiny")
    for key in keys:
        if frame[key].dtype.kind == "f":
            frame[key] = frame[key].astype("Int64")  # missing integer keys, as results.py stores them
    frame = frame[["run_id", "task", "model", "attention", "context_length", *keys, "metric", "value", *provenance]]
    frame.to_parquet(folder / "results.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"run_id": folder.name, "config": {"task": task}}))
    return folder


def perplexity_run(folder, shift: dict | None = None, attentions=("softmax", "ssmax"), lengths=(512, 1024),
                   samples: int = 3, seed: int = 0):
    """mean_nll per sample (+ shift[(attention, length)]), perplexity = exp(mean_nll), nll per bin."""
    rng = np.random.default_rng(seed)
    rows = []
    for attention in attentions:
        for length in lengths:
            for sample in range(samples):
                mean = 2.5 + 0.3 * rng.standard_normal() + (shift or {}).get((attention, length), 0.0)
                base = {"attention": attention, "context_length": length, "sample": sample, "source": "builtin", "offset": 17 * sample}
                rows += [{**base, "position_bin": b, "metric": "nll", "value": mean + 1 / b, "position_end": 2 * b} for b in BINS]
                rows += [{**base, "position_bin": None, "metric": "mean_nll", "value": mean, "position_end": None},
                         {**base, "position_bin": None, "metric": "perplexity", "value": math.exp(mean), "position_end": None}]
    return write_run(folder, rows, ["sample", "position_bin"], "perplexity", ("position_end", "source", "offset"))


def needle_run(folder, correct: list[int], attention="softmax", length=2048, logprob_shift=0.0):
    rows = []
    for trial, ok in enumerate(correct):
        base = {"attention": attention, "context_length": length, "depth": 50, "trial": trial, "needle": "passkey", "answer": "123"}
        rows += [{**base, "metric": "greedy_correct", "value": float(ok)},
                 {**base, "metric": "answer_logprob", "value": -1.0 - 0.1 * (trial % 7) + logprob_shift}]
    return write_run(folder, rows, ["depth", "trial", "needle"], "needle", ("answer",))


@pytest.fixture
def base(tmp_path):
    return perplexity_run(tmp_path / "base")


# -- compare -------------------------------------------------------------------------------------

def test_identical_runs_pass(base, tmp_path):
    c = compare_runs(base, perplexity_run(tmp_path / "same"))
    assert c.exit_code == 0 and c.regressions.empty and c.improvements.empty
    # summary level: mean_nll and perplexity per cell; per-position nll is too fine and left out
    assert set(c.rows.metric) == {"mean_nll", "perplexity"} and len(c.rows) == 2 * 2 * 2
    assert (c.rows.delta == 0).all() and not c.rows.significant.any()
    assert list(c.rows.columns) == ["attention", "context_length", "metric", "baseline", "candidate", "delta", "rel_delta",
                                    "direction", "tolerance", "regression", "improvement", "n", "ci_low", "ci_high", "significant"]
    assert (c.rows.n == 3).all()


def test_worse_candidate_is_a_regression(base, tmp_path):
    cand = perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.2})
    c = compare_runs(base, cand, tolerance=0.05)
    assert c.exit_code == 1
    assert set(zip(c.regressions.attention, c.regressions.context_length, c.regressions.metric)) == {
        ("ssmax", 1024, "mean_nll"), ("ssmax", 1024, "perplexity")}
    row = c.regressions.set_index("metric").loc["mean_nll"]
    assert row.delta == pytest.approx(0.2) and row.direction == -1
    assert row.significant  # the same shift on every paired sample is beyond noise


def test_better_candidate_is_an_improvement(base, tmp_path):
    c = compare_runs(base, perplexity_run(tmp_path / "better", shift={("softmax", 512): -0.2}))
    assert c.exit_code == 0 and c.regressions.empty
    assert set(c.improvements.metric) == {"mean_nll", "perplexity"}
    assert set(c.improvements.attention) == {"softmax"} and set(c.improvements.context_length) == {512}


def test_within_tolerance_passes(base, tmp_path):
    cand = perplexity_run(tmp_path / "slightly", shift={("ssmax", 512): 0.01})
    assert compare_runs(base, cand).exit_code == 1  # default: any worsening counts
    # perplexity moves by ~exp(2.5) * 0.01 ~ 0.12: it needs its own, larger tolerance
    c = compare_runs(base, cand, tolerance=0.02, metric_tolerances={"perplexity": Tolerance(absolute=0.5)})
    assert c.exit_code == 0 and c.regressions.empty and c.improvements.empty


def test_relative_tolerance(base, tmp_path):
    cand = perplexity_run(tmp_path / "rel", shift={("softmax", 1024): 0.01})  # mean_nll +~0.4%, perplexity +1%
    assert compare_runs(base, cand, tolerance=0.02, relative=True).exit_code == 0
    c = compare_runs(base, cand, tolerance=0.005, relative=True)
    assert c.exit_code == 1 and list(c.regressions.metric) == ["perplexity"]
    assert c.regressions.rel_delta.iloc[0] == pytest.approx(math.expm1(0.01), rel=1e-6)
    mixed = compare_runs(base, cand, tolerance=0.005, relative=True, metric_tolerances={"perplexity": Tolerance(absolute=1.0)})
    assert mixed.exit_code == 0


def test_runs_that_do_not_overlap(base, tmp_path):
    cand = perplexity_run(tmp_path / "other", attentions=("logn",), lengths=(4096,))
    with pytest.raises(ConfigError) as err:
        compare_runs(base, cand)
    message = str(err.value)
    assert "softmax@512,1024" in message and "ssmax@512,1024" in message and "logn@4096" in message
    assert err.value.exit_code == 2


def test_partial_overlap_lists_unmatched_cells(base, tmp_path):
    cand = perplexity_run(tmp_path / "part", attentions=("softmax",), lengths=(1024, 2048))
    c = compare_runs(base, cand)
    assert set(zip(c.rows.attention, c.rows.context_length)) == {("softmax", 1024)}
    assert "softmax@512 mean_nll" in c.summary["baseline_only"] and "ssmax@1024 perplexity" in c.summary["baseline_only"]
    assert c.summary["candidate_only"] == ["softmax@2048 mean_nll", "softmax@2048 perplexity"]
    assert "Only in the candidate" in to_markdown(c)


def test_bad_inputs(base, tmp_path):
    with pytest.raises(ConfigError, match="different tasks"):
        compare_runs(base, needle_run(tmp_path / "needle", [1, 0]))
    with pytest.raises(ResultsError, match="does not exist"):
        compare_runs(base, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no results.parquet"):
        compare_runs(tmp_path / "empty", base)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "results.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ResultsError, match="cannot be read"):
        compare_runs(base, torn)
    with pytest.raises(ConfigError, match="level"):
        compare_runs(base, base, level="cells")


def test_reports(base, tmp_path):
    cand = perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.2, ("softmax", 512): -0.1})
    c = compare_runs(base, cand)
    markdown = to_markdown(c)
    assert markdown.startswith("## ❌") and "2 regressions" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ❌")]
    assert len(table) == 2 and all("ssmax | 1024" in line for line in table)
    assert markdown.index("| ❌") < markdown.index("| ✅")  # regressions first
    assert to_markdown(compare_runs(base, base)).startswith("## ✅")
    assert "more rows omitted" in to_markdown(c, limit=3)

    data = json.loads(to_json(c))
    assert data["summary"]["regressions"] == 2 and len(data["rows"]) == len(c.rows)
    assert all(row["ci_low"] is None or isinstance(row["ci_low"], float) for row in data["rows"])

    root = ET.fromstring(to_junit(c))
    suite = root.find("testsuite")
    assert int(suite.get("failures")) == len(c.regressions) == len(suite.findall("testcase/failure"))
    assert int(suite.get("tests")) == len(c.rows)
    assert to_rich_table(c).row_count == len(c.rows)


def test_rows_level_joins_every_row(base, tmp_path):
    c = compare_runs(base, perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.2}), level="rows")
    per_cell = len(BINS) + 2  # nll per bin, mean_nll, perplexity
    assert len(c.rows) == 2 * 2 * 3 * per_cell
    assert {"sample", "position_bin"} <= set(c.rows.columns)
    assert len(c.regressions) == 3 * per_cell and set(c.regressions.attention) == {"ssmax"}
    assert ET.fromstring(to_junit(c)).find("testsuite").get("failures") == str(len(c.regressions))


def test_accuracy_noise_binomial(tmp_path):
    # 200 trials: 90% -> 50% accuracy is far beyond noise
    big = compare_runs(needle_run(tmp_path / "b1", [1] * 180 + [0] * 20), needle_run(tmp_path / "c1", [1] * 100 + [0] * 100))
    acc = big.rows.set_index("metric").loc["greedy_correct"]
    assert acc.regression and acc.significant and acc.ci_high < 0 and acc.n == 200
    # one trial flipping from right to wrong is a regression, but not beyond noise
    one = compare_runs(needle_run(tmp_path / "b2", [1]), needle_run(tmp_path / "c2", [0]))
    flip = one.rows.set_index("metric").loc["greedy_correct"]
    assert flip.regression and not flip.significant and flip.ci_low <= 0 <= flip.ci_high
    assert one.exit_code == 1 and one.summary["significant_regressions"] == 0


def test_continuous_noise_bootstrap(tmp_path):
    correct = [1, 0] * 20
    base = needle_run(tmp_path / "b", correct)
    # the same small shift on every paired trial: the paired bootstrap sees it despite the spread across trials
    shifted = compare_runs(base, needle_run(tmp_path / "c", correct, logprob_shift=-0.02)).rows.set_index("metric")
    assert shifted.loc["answer_logprob"].significant and shifted.loc["answer_logprob"].regression
    assert not shifted.loc["greedy_correct"].regression
    # the candidate's trials are other samples (unpaired): a small shift is within the spread
    rows = pd.read_parquet(tmp_path / "c" / "results.parquet")
    rows["trial"] += 1000
    rows.to_parquet(tmp_path / "c" / "results.parquet", index=False)
    unpaired = compare_runs(base, tmp_path / "c").rows.set_index("metric").loc["answer_logprob"]
    assert unpaired.regression and not unpaired.significant


def test_focus_heads_are_averaged_within_samples(tmp_path):
    rows = [{"attention": "softmax", "context_length": 1024, "depth": 50, "trial": t, "layer": layer, "head": head,
             "metric": metric, "value": 0.1 * (t + 1) + 0.01 * head}
            for t in range(4) for layer in range(2) for head in range(3) for metric in ("needle_mass", "entropy", "entropy_norm")]
    base = write_run(tmp_path / "b", rows, ["depth", "trial", "layer", "head"], "focus")
    c = compare_runs(base, base)
    assert set(c.rows.metric) == {"needle_mass", "entropy_norm"}  # the task's headline metrics
    assert (c.rows.n == 4).all()  # samples are (depth, trial); heads of one prompt are not independent samples


# -- gates ---------------------------------------------------------------------------------------

def gate_file(tmp_path, text: str):
    path = tmp_path / "gates.toml"
    path.write_text(text)
    return path


def test_gates_pass_and_fail(tmp_path):
    run = needle_run(tmp_path / "run", [1] * 9 + [0])  # accuracy 0.9 at 2048
    gates = load_gates(gate_file(tmp_path, """
[[gate]]
task = "needle"
metric = "greedy_correct"
attention = "softmax"
context_length = "2k"
op = ">="
value = 0.9

[[gate]]
name = "strict"
task = "needle"
metric = "greedy_correct"
op = ">"
value = 0.95
"""))
    assert gates[0].context_length == 2048 and gates[1].context_length is None
    report = check_gates(run, gates)
    assert list(report.rows.status) == ["pass", "fail"] and report.exit_code == 1
    assert report.rows.value.tolist() == pytest.approx([0.9, 0.9])
    assert report.summary["fail"] == 1
    assert "❌" in gate_markdown(report) and "strict" in gate_markdown(report)
    assert ET.fromstring(gate_junit(report)).find("testsuite").get("failures") == "1"
    assert check_gates(run, gates[:1]).exit_code == 0


def test_gate_relative_to_baseline(tmp_path):
    perplexity_run(tmp_path / "results" / "base")
    worse = perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.05})  # perplexity +5% at ssmax@1024
    gates = load_gates(gate_file(tmp_path, """
baseline = "results/base"
[[gate]]
task = "perplexity"
metric = "perplexity"
context_length = 1024
op = "<="
baseline_factor = 1.02
"""))
    assert gates[0].baseline == str(tmp_path / "results" / "base")  # relative to the gate file
    report = check_gates(worse, gates)
    status = dict(zip(report.rows.attention, report.rows.status))
    assert status == {"softmax": "pass", "ssmax": "fail"} and report.exit_code == 1  # each variant on its own
    row = report.rows.set_index("attention").loc["ssmax"]
    assert row.threshold == pytest.approx(row.baseline * 1.02) and row.value > row.threshold
    # --baseline overrides the file's baseline
    assert check_gates(worse, gates, baseline_dir=worse).exit_code == 0
    no_baseline = load_gates(gate_file(tmp_path, """
[[gate]]
task = "perplexity"
metric = "perplexity"
op = "<="
baseline_factor = 1.02
"""))
    with pytest.raises(ConfigError, match="baseline"):
        check_gates(worse, no_baseline)


def test_gate_that_selects_nothing_fails(tmp_path):
    run = needle_run(tmp_path / "run", [1, 1])
    gates = load_gates(gate_file(tmp_path, """
[[gate]]
task = "needle"
metric = "greedy_correct"
context_length = 8192
op = ">="
value = 0.0

[[gate]]
task = "needle"
metric = "acuracy"
op = ">="
value = 0.0

[[gate]]
task = "perplexity"
metric = "perplexity"
op = "<="
value = 100
"""))
    report = check_gates(run, gates)
    assert list(report.rows.status) == ["fail", "fail", "skipped"] and report.exit_code == 1
    assert "selects nothing" in report.rows.reason[0] and "2048" in report.rows.reason[0]
    only_other_task = check_gates(run, gates[2:])
    assert only_other_task.exit_code == 1 and "no gate" in only_other_task.rows.reason.iloc[-1]


@pytest.mark.parametrize("text, problem", [
    ('[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nvalue = 0.9\nthreshhold = 1\n', "threshhold"),
    ('baselin = "x"\n[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\nvalue = 1\n', "baselin"),
    ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = "=>"\nvalue = 1\n', "op"),
    ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\n', "exactly one"),
    ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\nvalue = 1\nbaseline_factor = 1.0\n', "exactly one"),
    ('[[gate]]\ntask = "neddle"\nmetric = "m"\nop = ">="\nvalue = 1\n', "did you mean 'needle'"),
    ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\nvalue = 1\ncontext_length = "long"\n', "context_length"),
    ('[[gate]\n', "not valid TOML"),
    ('baseline = "x"\n', "no [[gate]]"),
])
def test_bad_gate_files(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")) as err:
        load_gates(gate_file(tmp_path, text))
    assert err.value.exit_code == 2


def test_missing_gate_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_gates(tmp_path / "nope.toml")
