"""evalkit.report.gate on small run folders written in the test (helpers from test_compare)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from test_compare import needle_run, perplexity_run

from evalkit.core.errors import ConfigError
from evalkit.report import stats
from evalkit.report.gate import check_gates, load_gates, to_json, to_junit, to_markdown


def gate_file(tmp_path, text: str):
    path = tmp_path / "gates.toml"
    path.write_text(text)
    return path


def test_gates_pass_and_fail(tmp_path):
    run = needle_run(tmp_path / "run", [1] * 9 + [0])  # accuracy 0.9 at 2048, 10 independent trials
    gates = load_gates(
        gate_file(
            tmp_path,
            """
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
""",
        )
    )
    assert gates[0].context_length == 2048 and gates[1].context_length is None and gates[0].require == "value"
    report = check_gates(run, gates)
    assert list(report.rows.status) == ["pass", "fail"] and report.exit_code == 1
    row = report.rows.iloc[0]
    wilson = stats.wilson(9, 10)  # one row per trial: the plain Wilson interval
    assert row.value == pytest.approx(0.9) and row.n == 10 and row.units == 10
    assert (row.ci_low, row.ci_high) == pytest.approx(wilson)
    markdown = to_markdown(report)
    assert "❌" in markdown and "strict" in markdown and f"[{row.ci_low:.4g}, {row.ci_high:.4g}]" in markdown
    suite = ET.fromstring(to_junit(report)).find("testsuite")
    assert suite.get("failures") == "1" and "95% CI" in suite.find("testcase/failure").get("message")
    assert "n 10" in suite.find("testcase/system-out").text
    assert json.loads(to_json(report))["rows"][0]["ci_low"] == pytest.approx(wilson[0])
    assert check_gates(run, gates[:1]).exit_code == 0


def test_require_ci(tmp_path):
    """0.9 on 10 trials: the point value passes >= 0.8; its interval [0.60, 0.98] does not."""
    run = needle_run(tmp_path / "run", [1] * 9 + [0])
    text = '[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nvalue = 0.8\n'
    assert check_gates(run, load_gates(gate_file(tmp_path, text))).exit_code == 0
    report = check_gates(run, load_gates(gate_file(tmp_path, text + 'require = "ci"\n')))
    assert report.exit_code == 1 and "is not wholly >= 0.8" in report.rows.reason.iloc[0]
    many = needle_run(tmp_path / "many", [1] * 180 + [0] * 20)  # 0.9 on 200 trials: the interval clears 0.8
    assert check_gates(many, load_gates(gate_file(tmp_path, text + 'require = "ci"\n'))).exit_code == 0
    with pytest.raises(ConfigError, match="require"):
        load_gates(gate_file(tmp_path, text + 'require = "always"\n'))


def test_interrupted_run_fails_the_gate(tmp_path):
    run = needle_run(tmp_path / "cut", [1] * 10, interrupted=True, planned=2000)
    text = '[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nvalue = 0.5\n'
    report = check_gates(run, load_gates(gate_file(tmp_path, text)))
    assert report.exit_code == 1
    assert list(report.rows.status) == ["fail", "pass"]  # the numbers pass, the run does not
    reason = report.rows.reason.iloc[0]
    assert "interrupted" in reason and "10 of 2000" in reason
    assert reason in to_markdown(report) and reason in to_json(report)
    assert any(reason in f.get("message") for f in ET.fromstring(to_junit(report)).iter("failure"))


def test_perplexity_gate_is_exp_of_mean_nll(tmp_path):
    run = perplexity_run(tmp_path / "run")
    gates = load_gates(
        gate_file(
            tmp_path,
            '[[gate]]\ntask = "perplexity"\nmetric = "perplexity"\nattention = "softmax"\n'
            'context_length = 512\nop = "<="\nvalue = 1000\n',
        )
    )
    row = check_gates(run, gates).rows.iloc[0]
    import pandas as pd

    frame = pd.read_parquet(run / "results.parquet")
    nll = frame[(frame.metric == "mean_nll") & (frame.attention == "softmax") & (frame.context_length == 512)].value
    expected = stats.mean(nll).exp()  # as summary.csv: exp(mean NLL), not the mean of per-window perplexities
    assert (row.value, row.ci_low, row.ci_high) == pytest.approx((expected.value, expected.ci_low, expected.ci_high))
    assert row.n == 3


def test_gate_relative_to_baseline(tmp_path):
    perplexity_run(tmp_path / "results" / "base")
    worse = perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.05})  # perplexity +5% at ssmax@1024
    gates = load_gates(
        gate_file(
            tmp_path,
            """
baseline = "results/base"
[[gate]]
task = "perplexity"
metric = "perplexity"
context_length = 1024
op = "<="
baseline_factor = 1.02
""",
        )
    )
    assert gates[0].baseline == str(tmp_path / "results" / "base")  # relative to the gate file
    report = check_gates(worse, gates)
    status = dict(zip(report.rows.attention, report.rows.status))
    assert status == {"softmax": "pass", "ssmax": "fail"} and report.exit_code == 1  # each variant on its own
    row = report.rows.set_index("attention").loc["ssmax"]
    assert row.threshold == pytest.approx(row.baseline * 1.02) and row.value > row.threshold
    assert check_gates(worse, gates, baseline_dir=worse).exit_code == 0  # --baseline overrides the file's
    no_baseline = load_gates(
        gate_file(tmp_path, '[[gate]]\ntask = "perplexity"\nmetric = "perplexity"\nop = "<="\nbaseline_factor = 1.02\n')
    )
    with pytest.raises(ConfigError, match="baseline"):
        check_gates(worse, no_baseline)


def test_gate_that_selects_nothing_fails(tmp_path):
    run = needle_run(tmp_path / "run", [1, 1])
    gates = load_gates(
        gate_file(
            tmp_path,
            """
[[gate]]
task = "needle"
metric = "greedy_correct"
context_length = 8192
op = ">="
value = 0.0

[[gate]]
task = "perplexity"
metric = "perplexity"
op = "<="
value = 100
""",
        )
    )
    report = check_gates(run, gates)
    assert list(report.rows.status) == ["fail", "skipped"] and report.exit_code == 1
    assert "selects nothing" in report.rows.reason[0] and "2048" in report.rows.reason[0]
    only_other_task = check_gates(run, gates[1:])
    assert only_other_task.exit_code == 1 and "no gate" in only_other_task.rows.reason.iloc[-1]


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            '[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nvalue = 0.9\nthreshhold = 1\n',
            "threshhold",
        ),
        ('baselin = "x"\n[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\nvalue = 1\n', "baselin"),
        ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = "=>"\nvalue = 1\n', "op"),
        ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\n', "exactly one"),
        ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\nvalue = 1\nbaseline_factor = 1.0\n', "exactly one"),
        ('[[gate]]\ntask = "neddle"\nmetric = "m"\nop = ">="\nvalue = 1\n', "did you mean 'needle'"),
        ('[[gate]]\ntask = "needle"\nmetric = "m"\nop = ">="\nvalue = 1\ncontext_length = "long"\n', "context_length"),
        ("[[gate]\n", "not valid TOML"),
        ('baseline = "x"\n', "no [[gate]]"),
    ],
)
def test_bad_gate_files(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[")) as err:
        load_gates(gate_file(tmp_path, text))
    assert err.value.exit_code == 2


def test_missing_gate_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_gates(tmp_path / "nope.toml")


def test_misspelt_metric_is_a_bad_gate_file(tmp_path):
    run = needle_run(tmp_path / "run", [1, 1])
    gates = load_gates(gate_file(tmp_path, '[[gate]]\ntask = "needle"\nmetric = "acuracy"\nop = ">="\nvalue = 0.5\n'))
    with pytest.raises(ConfigError, match="acuracy.*greedy_correct|greedy_correct") as info:
        check_gates(run, gates)
    assert "greedy_correct" in str(info.value)


def test_relative_gate_refuses_a_baseline_that_is_not_comparable(tmp_path):
    base = needle_run(tmp_path / "base", [1, 1], seed=1)
    cand = needle_run(tmp_path / "cand", [1, 1], seed=2)
    gates = load_gates(
        gate_file(tmp_path, '[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nbaseline_delta = -0.1\n')
    )
    report = check_gates(cand, gates, baseline_dir=base)
    row = report.rows[report.rows.gate == "(baseline comparable)"]
    assert report.exit_code == 1 and len(row) == 1 and "seeds differ" in row.reason.iloc[0]
    assert "seeds differ" in to_junit(report) and "seeds differ" in to_markdown(report)
