"""Thresholds on one run, for CI: ``evalkit gate --config gates.toml results/candidate``.

A gate file (TOML) holds an optional default baseline and a list of ``[[gate]]`` tables::

    baseline = "results/baseline"   # optional: the run that baseline_factor / baseline_delta gates
                                    # read; relative to this file's folder; --baseline overrides it

    [[gate]]
    name = "needle at 8k"           # optional, shown in reports
    task = "needle"                 # required; gates for another task than the run's are skipped
    metric = "greedy_correct"       # required: a metric of the run's rows
    attention = "softmax"           # optional: omitted = each variant in the run, checked separately
    context_length = 8192           # optional: 8192, "8k", or omitted / "all" = mean over every length
    op = ">="                       # required: >=, <=, > or <
    value = 0.9                     # the threshold: exactly one of value, baseline_factor, baseline_delta
    require = "ci"                  # optional: "value" (default) or "ci", see below

    [[gate]]
    task = "perplexity"
    metric = "perplexity"
    context_length = 4096
    op = "<="
    baseline_factor = 1.02          # threshold = the baseline's value * 1.02
    # baseline_delta = 0.05         # threshold = the baseline's value + 0.05 (for log-probs, accuracy)
    # baseline = "results/other"    # this gate's own baseline run

A gate's value is the mean over the prompts it selects (heads and position bins of one prompt
averaged first; over every length with "all", as summary.csv's "all" row), reported with n, the
independent units behind it (a needle trial under --draw trial, a perplexity window) and its 95%
interval from ``evalkit.report.stats`` (cluster-adjusted Wilson for 0/1 metrics, cluster t
otherwise). ``perplexity`` is exp of the mean NLL with exp of its interval, as in summary.csv.

The point value decides (``require = "value"``, the default): a threshold is a product decision and
an interval straddling it says "too few trials to be sure", which the report shows beside the
verdict. ``require = "ci"`` passes only when the whole interval is on the passing side (the lower
end for >= and >, the upper end for <= and <), for gates that must hold with 95% confidence; a gate
with one unit has no interval and then fails. A baseline-relative threshold uses the baseline's
point value.

A gate that selects nothing fails and says what the run holds instead: a misspelt metric never
passes silently. An interrupted or incomplete run (its manifest says interrupted, has no end
record, or finished fewer samples than it planned) fails with that reason, and so does an
incomplete baseline. Unknown keys are rejected. The report exits 1 when any gate fails or no gate
is for the run's task, 2 on a bad gate file or run folder.
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ConfigError
from evalkit.core.metrics import exp_source
from evalkit.core.registry import task_names
from evalkit.report import stats
from evalkit.report.render import dumps, fmt, interval, junit_xml, markdown_table, records, rich_table
from evalkit.report.runs import samples, unit_columns, with_rows
from evalkit.store.run_folder import Run, load_run

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
THRESHOLDS = ("value", "baseline_factor", "baseline_delta")
REQUIRE = ("value", "ci")


@dataclass(frozen=True)
class Gate:
    task: str
    metric: str
    op: str
    value: float | None = None
    baseline_factor: float | None = None
    baseline_delta: float | None = None
    attention: str | None = None  # None: every variant in the run, each checked on its own
    context_length: int | None = None  # None: the mean over every length
    baseline: str | None = None  # run folder for baseline_factor / baseline_delta
    name: str | None = None
    require: str = "value"  # "value": the point value decides; "ci": the whole 95% interval must pass

    def label(self) -> str:
        if self.name:
            return self.name
        rhs = (
            fmt(self.value, "g")
            if self.value is not None
            else f"baseline * {self.baseline_factor:g}"
            if self.baseline_factor is not None
            else f"baseline {'-' if self.baseline_delta < 0 else '+'} {abs(self.baseline_delta):g}"
        )
        return f"{self.metric} {self.op} {rhs}"


@dataclass
class GateReport:
    rows: pd.DataFrame  # one row per (gate, attention variant) checked
    summary: dict
    exit_code: int


def _parse_gate(raw, where: str, default_baseline: str | None, errors: list[str]) -> Gate | None:
    from evalkit.core.grid import parse_length

    if not isinstance(raw, dict):
        errors.append(f"{where} is not a table")
        return None
    allowed = {f.name for f in fields(Gate)}
    problems = (
        [f"unknown key(s) {', '.join(sorted(set(raw) - allowed))} (allowed: {', '.join(sorted(allowed))})"]
        if set(raw) - allowed
        else []
    )
    problems += [f"missing {key!r}" for key in ("task", "metric", "op") if key not in raw]
    if "op" in raw and raw["op"] not in OPS:
        problems.append(f"op {raw['op']!r} is not one of {', '.join(OPS)}")
    given = [key for key in THRESHOLDS if key in raw]
    if len(given) != 1:
        problems.append(
            f"needs exactly one of {', '.join(THRESHOLDS)}" + (f" (has {', '.join(given)})" if given else "")
        )
    for key in given:
        if not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool) or not math.isfinite(raw[key]):
            problems.append(f"{key} must be a number")
    if raw.get("require", "value") not in REQUIRE:
        problems.append(f"require {raw['require']!r} is not one of {', '.join(REQUIRE)}")
    for key in ("task", "metric", "attention", "baseline", "name"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{key} must be a string")
    known = task_names()  # gates for another task are skipped, so a misspelt task must not load
    if isinstance(raw.get("task"), str) and known and raw["task"] not in known:
        close = difflib.get_close_matches(raw["task"], known, n=1)
        problems.append(
            f"unknown task {raw['task']!r}"
            + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})")
        )
    length = raw.get("context_length", "all")
    try:
        length = (
            None
            if length == "all"
            else length
            if isinstance(length, int) and not isinstance(length, bool)
            else parse_length(str(length))
        )
    except ConfigError:
        problems.append(f'context_length {length!r} is not a length like 8192, "8k" or "all"')
    if problems:
        errors.append(f"{where}: {'; '.join(problems)}")
        return None
    return Gate(**{**raw, "context_length": length, "baseline": raw.get("baseline", default_baseline)})


def load_gates(path: str | Path) -> list[Gate]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"gate file {path} not found", "pass --config with a TOML file of [[gate]] tables")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "fix the file; see `evalkit gate --help`") from None
    errors = (
        [f"unknown top-level key(s) {', '.join(sorted(set(data) - {'baseline', 'gate'}))} (allowed: baseline, gate)"]
        if set(data) - {"baseline", "gate"}
        else []
    )
    baseline = data.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        errors.append("baseline must be a string (a run folder)")
        baseline = None
    resolve = lambda p: str(p if Path(p).is_absolute() else path.parent / p)  # noqa: E731 - relative to the file
    raw_gates = data.get("gate", [])
    if not isinstance(raw_gates, list) or not raw_gates:
        errors.append("no [[gate]] tables")
        raw_gates = []
    gates = [_parse_gate(raw, f"gate {i}", baseline, errors) for i, raw in enumerate(raw_gates, 1)]
    if errors:  # every mistake at once, not one per attempt
        raise ConfigError(f"{path}: {' | '.join(errors)}", "fix the gate file; see the format in `evalkit gate --help`")
    return [g if g.baseline is None else Gate(**{**g.__dict__, "baseline": resolve(g.baseline)}) for g in gates]


def _samples(folder) -> tuple[Run, pd.DataFrame]:
    """A run and its per-prompt values (heads and position bins averaged), with their units."""
    run = with_rows(load_run(folder))
    return run, samples(run.frame, run.keys, unit_columns(run), None)


def _exp_names(metrics, present) -> set[str]:
    """Names a gate may use for a metric shown through exp (perplexity for mean_nll), where the run has it."""
    return {m.exp for m in metrics.values() if m.exp and m.name in present}


def _select(table: pd.DataFrame, gate: Gate, attention: str, metrics=None) -> tuple[stats.Estimate | None, str | None]:
    """The gate's value with its interval on these prompts, or why it selects nothing. ``metrics``: the
    run's declarations (the interval its kind calls for; perplexity = exp(mean NLL), as in summary.csv)."""
    metrics = metrics or {}
    source = exp_source(metrics, gate.metric)
    metric = source.name if source is not None else gate.metric
    part = table[(table.metric == metric) & (table.attention == attention)]
    if gate.context_length is not None:
        part = part[part.context_length == gate.context_length]
    if part.empty:
        has = table[table.attention == attention]
        where = f"{attention}@{gate.context_length or 'any length'}"
        names = sorted(set(has.metric) | _exp_names(metrics, set(has.metric)))
        close = difflib.get_close_matches(gate.metric, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close and close[0] != gate.metric else ""
        return None, (
            f"selects nothing: no {gate.metric} for {where}{hint}; the run has metrics "
            f"{', '.join(names) or 'none'} at lengths "
            f"{', '.join(map(str, sorted(has.context_length.unique()))) or 'none'}"
        )
    weights = _scored_tokens(table, part)
    declared = metrics.get(metric)
    est = (
        stats.of_metric(declared, part.value, part.unit)
        if weights is None
        else stats.weighted_mean(part.value, weights, part.unit)
    )
    est = est.exp() if source is not None else est
    return est, None if math.isfinite(est.value) else f"{gate.metric} is {est.value}"


def _scored_tokens(table: pd.DataFrame, part: pd.DataFrame):
    """Tokens each window scores, where windows score different numbers (--stride, --match lm-eval):
    summary.csv's NLL is then the token-weighted mean (the NLL sum over the tokens scored), and so is
    the gate's. None where windows score alike (random windows: the plain mean is the same)."""
    counts = table[table.metric == "scored_tokens"]
    if counts.empty or part.metric.iloc[0] != "mean_nll":
        return None
    # one row per window: a unit may hold several (a document under --match lm-eval)
    keys = [k for k in ("attention", "model", "context_length", "seed", "sample", "unit") if k in table.columns]
    weights = part[keys].merge(counts[keys + ["value"]].drop_duplicates(keys), on=keys, how="left")["value"]
    return None if weights.isna().any() else weights.to_numpy()


def _comparable(base: Run, cand: Run) -> str | None:
    """Why a baseline run's value is no fair reference for this candidate, or None."""
    from evalkit.report.runs import option_differences, setup_differences

    problems = []
    b_seeds, c_seeds = sorted(map(str, base.frame.seed.unique())), sorted(map(str, cand.frame.seed.unique()))
    if b_seeds != c_seeds:
        problems.append(
            f"seeds differ (baseline {', '.join(b_seeds)}; candidate {', '.join(c_seeds)}): other prompts or windows"
        )
    problems += option_differences([base], [cand]) + setup_differences([base], [cand])
    return "; ".join(problems) or None


def _decide(gate: Gate, est: stats.Estimate, threshold: float) -> tuple[bool, str]:
    """By the point value, or (require = "ci") by the whole interval's side of the threshold."""
    op = OPS[gate.op]
    if gate.require == "value":
        passed = op(est.value, threshold)
        return passed, f"{fmt(est.value)} {gate.op} {fmt(threshold)}" + ("" if passed else " is false")
    if not math.isfinite(est.ci_low):
        return False, f'require = "ci" but {gate.metric} has no interval ({est.units} unit)'
    end = est.ci_low if gate.op in (">=", ">") else est.ci_high  # the end nearest failing
    passed = op(end, threshold)
    return passed, (
        f"95% interval [{fmt(est.ci_low)}, {fmt(est.ci_high)}] {'is' if passed else 'is not'} wholly "
        f"{gate.op} {fmt(threshold)}"
    )


def check_gates(candidate_dir: str | Path, gates: list[Gate], baseline_dir: str | Path | None = None) -> GateReport:
    needs_baseline = [g.label() for g in gates if g.value is None and not (baseline_dir or g.baseline)]
    if needs_baseline:
        raise ConfigError(
            f"gate(s) {', '.join(needs_baseline)} compare with a baseline but none is given",
            'set baseline = "results/..." in the gate file, or pass --baseline',
        )
    run, table = _samples(candidate_dir)
    task = run.task
    known = sorted(set(table.metric) | _exp_names(run.metrics, set(table.metric)))
    unknown = [g for g in gates if g.task == task and g.metric not in known]
    if unknown:  # a misspelt metric is a bad gate file (exit 2), not a failing row that reads like a regression
        names = ", ".join(sorted({g.metric for g in unknown}))
        close = difflib.get_close_matches(unknown[0].metric, known, n=1)
        raise ConfigError(
            f"gate metric {names} is not in run {candidate_dir}" + (f" (did you mean {close[0]}?)" if close else ""),
            f"the run's metrics: {', '.join(known)}",
        )
    baselines: dict[str, tuple[Run, pd.DataFrame]] = {}
    rows = []
    unsafe = run.completeness.problem  # an interrupted or incomplete run is never a pass, whatever its numbers
    if unsafe:
        rows.append(
            {
                "gate": "(run complete)",
                "task": task,
                "metric": "",
                "op": "",
                "context_length": "all",
                "attention": "*",
                "status": "fail",
                "reason": unsafe,
            }
        )
    for gate in gates:
        row = {
            "gate": gate.label(),
            "task": gate.task,
            "metric": gate.metric,
            "op": gate.op,
            "context_length": gate.context_length or "all",
            "require": gate.require,
        }
        if gate.task != task:
            rows.append(
                {
                    **row,
                    "attention": gate.attention or "*",
                    "status": "skipped",
                    "reason": f"gate is for task {gate.task}; this run is {task}",
                }
            )
            continue
        for attention in [gate.attention] if gate.attention else sorted(table.attention.unique()):
            est, why = _select(table, gate, attention, run.metrics)
            base = math.nan
            if gate.value is not None:
                threshold = float(gate.value)
            else:
                folder = str(baseline_dir or gate.baseline)
                if folder not in baselines:
                    baselines[folder] = _samples(folder)
                    base_run = baselines[folder][0]
                    if base_run.task != task:
                        raise ConfigError(
                            f"baseline {folder} is a {base_run.task} run; the candidate is {task}",
                            "give a baseline of the same task",
                        )
                    comparable = _comparable(base_run, run)
                    if comparable:
                        rows.append(
                            {
                                "gate": "(baseline comparable)",
                                "task": task,
                                "metric": "",
                                "op": "",
                                "context_length": "all",
                                "attention": "*",
                                "status": "fail",
                                "reason": f"baseline {folder}: {comparable}; a relative threshold needs the "
                                "same seed, windows, options, tokenizer, dtype and device class",
                            }
                        )
                    if not base_run.complete:
                        rows.append(
                            {
                                "gate": "(baseline complete)",
                                "task": task,
                                "metric": "",
                                "op": "",
                                "context_length": "all",
                                "attention": "*",
                                "status": "fail",
                                "reason": f"baseline: {base_run.completeness.problem}",
                            }
                        )
                base_est, base_why = _select(baselines[folder][1], gate, attention, baselines[folder][0].metrics)
                why = why or (base_why and f"baseline {folder}: {base_why}")
                base = base_est.value if base_est else math.nan
                threshold = (
                    base * gate.baseline_factor
                    if gate.baseline_factor is not None
                    else base + (gate.baseline_delta or 0.0)
                )
            passed, reason = (False, why) if why else _decide(gate, est, threshold)
            rows.append(
                {
                    **row,
                    "attention": attention,
                    "threshold": threshold,
                    "baseline": base,
                    **(
                        {
                            "value": est.value,
                            "ci_low": est.ci_low,
                            "ci_high": est.ci_high,
                            "n": est.n,
                            "units": est.units,
                        }
                        if est
                        else {}
                    ),
                    "status": "pass" if passed else "fail",
                    "reason": reason,
                }
            )
    if all(r["status"] == "skipped" or r["gate"].startswith("(") for r in rows):  # nothing was checked: no pass
        rows.append(
            {
                "gate": "(no gate for this task)",
                "task": task,
                "metric": "",
                "op": "",
                "context_length": "all",
                "attention": "*",
                "status": "fail",
                "reason": f"no gate in the file is for task {task}",
            }
        )
    columns = [
        "gate",
        "task",
        "metric",
        "attention",
        "context_length",
        "op",
        "threshold",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "units",
        "baseline",
        "require",
        "status",
        "reason",
    ]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    for column in ("n", "units"):
        frame[column] = frame[column].astype("Int64")  # skipped and run-level rows have none
    frame["passed"] = frame.status == "pass"
    counts = frame.status.value_counts()
    exit_code = int(counts.get("fail", 0) > 0)
    summary = {
        "candidate": str(candidate_dir),
        "task": task,
        "gates": len(gates),
        "checks": len(frame),
        **{k: int(counts.get(k, 0)) for k in ("pass", "fail", "skipped")},
        "exit_code": exit_code,
    }
    return GateReport(frame, summary, exit_code)


def _display(report: GateReport) -> pd.DataFrame:
    order = report.rows.sort_values("status", key=lambda s: s.map({"fail": 0, "pass": 1, "skipped": 2}), kind="stable")
    icon = {"fail": "❌ fail", "pass": "✅ pass", "skipped": "skipped"}
    return pd.DataFrame(
        {
            "": order.status.map(icon),
            "gate": order.gate,
            "attention": order.attention,
            "length": order.context_length,
            "value": order.value.map(fmt),
            "95% CI": [interval(lo, hi, ".4g") for lo, hi in zip(order.ci_low, order.ci_high)],
            "n": order.n.map(fmt),
            "units": order.units.map(fmt),
            "threshold": order.threshold.map(fmt),
            "reason": order.reason,
        }
    ).astype(str)


def to_markdown(report: GateReport, limit: int = 50) -> str:
    s = report.summary
    head = f"## {'❌' if report.exit_code else '✅'} evalkit gate: {s['fail']} failed, {s['pass']} passed"
    line = f"{s['task']} run `{s['candidate']}`: {s['gates']} gates, {s['checks']} checks, {s['skipped']} skipped."
    return "\n".join([head, "", line, "", markdown_table(_display(report), limit), ""])


def to_json(report: GateReport) -> str:
    return dumps({"summary": report.summary, "rows": records(report.rows)})


def to_junit(report: GateReport) -> str:
    cases = []
    for row in records(report.rows):
        case = {
            "classname": f"evalkit.gate.{row['task']}.{row['attention']}",
            "name": f"{row['gate']}@{row['context_length']}",
        }
        measured = (
            ""
            if row["value"] is None
            else (
                f" (value {fmt(row['value'])}, 95% CI {interval(row['ci_low'], row['ci_high'], '.4g')}, n "
                f"{row['n']} in "
                f"{row['units']} units)"
            )
        )
        if row["status"] != "pass":
            case["failure" if row["status"] == "fail" else "skipped"] = row["reason"] + measured
        elif measured:
            case["system_out"] = row["reason"] + measured
        cases.append(case)
    return junit_xml(f"evalkit gate {report.summary['task']}", cases)


def to_rich_table(report: GateReport, limit: int = 50):
    table = _display(report)
    s = report.summary
    return rich_table(
        table,
        f"{s['task']}: {s['fail']} failed, {s['pass']} passed, {s['skipped']} skipped",
        table[""].str.startswith("❌"),
        table[""].str.startswith("✅"),
        limit,
    )
