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

    [[gate]]
    task = "perplexity"
    metric = "perplexity"
    context_length = 4096
    op = "<="
    baseline_factor = 1.02          # threshold = the baseline's value * 1.02
    # baseline_delta = 0.05         # threshold = the baseline's value + 0.05 (for log-probs, accuracy)
    # baseline = "results/other"    # this gate's own baseline run

A gate reads the summary-level cells of ``evalkit compare`` (per attention variant and context
length, the mean over samples) and takes the mean of the cells it selects. A gate that selects
nothing fails and says what the run holds instead: a misspelt metric never passes silently.
Unknown keys are rejected. The report exits 1 when any gate fails or no gate is for the run's task.
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from evalkit.compare import junit_xml, load_run, markdown_table, records, rich_table, summary_units, dumps, fmt
from evalkit.errors import ConfigError
from evalkit.registry import task_names

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
THRESHOLDS = ("value", "baseline_factor", "baseline_delta")


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

    def label(self) -> str:
        if self.name:
            return self.name
        rhs = (fmt(self.value, "g") if self.value is not None else f"baseline * {self.baseline_factor:g}"
               if self.baseline_factor is not None else f"baseline {'-' if self.baseline_delta < 0 else '+'} {abs(self.baseline_delta):g}")
        return f"{self.metric} {self.op} {rhs}"


@dataclass
class GateReport:
    rows: pd.DataFrame  # one row per (gate, attention variant) checked
    summary: dict
    exit_code: int


def _parse_gate(raw, where: str, default_baseline: str | None, errors: list[str]) -> Gate | None:
    from evalkit.grid import parse_length

    if not isinstance(raw, dict):
        errors.append(f"{where} is not a table")
        return None
    allowed = {f.name for f in fields(Gate)}
    problems = [f"unknown key(s) {', '.join(sorted(set(raw) - allowed))} (allowed: {', '.join(sorted(allowed))})"] \
        if set(raw) - allowed else []
    problems += [f"missing {key!r}" for key in ("task", "metric", "op") if key not in raw]
    if "op" in raw and raw["op"] not in OPS:
        problems.append(f"op {raw['op']!r} is not one of {', '.join(OPS)}")
    given = [key for key in THRESHOLDS if key in raw]
    if len(given) != 1:
        problems.append(f"needs exactly one of {', '.join(THRESHOLDS)}" + (f" (has {', '.join(given)})" if given else ""))
    for key in given:
        if not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool) or not math.isfinite(raw[key]):
            problems.append(f"{key} must be a number")
    for key in ("task", "metric", "attention", "baseline", "name"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{key} must be a string")
    known = task_names()  # gates for another task are skipped, so a misspelt task must not load
    if isinstance(raw.get("task"), str) and known and raw["task"] not in known:
        close = difflib.get_close_matches(raw["task"], known, n=1)
        problems.append(f"unknown task {raw['task']!r}" + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"))
    length = raw.get("context_length", "all")
    try:
        length = None if length == "all" else length if isinstance(length, int) and not isinstance(length, bool) \
            else parse_length(str(length))
    except ConfigError:
        problems.append(f"context_length {length!r} is not a length like 8192, \"8k\" or \"all\"")
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
    errors = [f"unknown top-level key(s) {', '.join(sorted(set(data) - {'baseline', 'gate'}))} (allowed: baseline, gate)"] \
        if set(data) - {"baseline", "gate"} else []
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


def _cells(folder) -> tuple[str, pd.DataFrame]:
    """Summary cells of a run: mean over samples per (attention, context_length, metric)."""
    run = load_run(folder)
    units, _ = summary_units(run, headline=False)
    cells = units.groupby(["attention", "context_length", "metric"])["value"].agg(["mean", "size"]).reset_index()
    return run.task, cells


def _select(cells: pd.DataFrame, gate: Gate, attention: str) -> tuple[float, int, str | None]:
    """The gate's value on these cells, the samples behind it, and why it selects nothing."""
    part = cells[(cells.metric == gate.metric) & (cells.attention == attention)]
    if gate.context_length is not None:
        part = part[part.context_length == gate.context_length]
    if part.empty:
        has = cells[cells.attention == attention]
        where = f"{attention}@{gate.context_length or 'any length'}"
        close = difflib.get_close_matches(gate.metric, list(has.metric.unique()), n=1)
        hint = f" (did you mean {close[0]}?)" if close and close[0] != gate.metric else ""
        return math.nan, 0, (f"selects nothing: no {gate.metric} for {where}{hint}; the run has metrics "
                             f"{', '.join(sorted(has.metric.unique())) or 'none'} at lengths "
                             f"{', '.join(map(str, sorted(has.context_length.unique()))) or 'none'}")
    value = float(part["mean"].mean())  # each length counts once, as in the summary's "all" row
    return value, int(part["size"].sum()), None if math.isfinite(value) else f"{gate.metric} is {value}"


def check_gates(candidate_dir: str | Path, gates: list[Gate], baseline_dir: str | Path | None = None) -> GateReport:
    needs_baseline = [g.label() for g in gates if g.value is None and not (baseline_dir or g.baseline)]
    if needs_baseline:
        raise ConfigError(f"gate(s) {', '.join(needs_baseline)} compare with a baseline but none is given",
                          "set baseline = \"results/...\" in the gate file, or pass --baseline")
    task, cells = _cells(candidate_dir)
    baselines: dict[str, pd.DataFrame] = {}
    rows = []
    for gate in gates:
        row = {"gate": gate.label(), "task": gate.task, "metric": gate.metric, "op": gate.op,
               "context_length": gate.context_length or "all"}
        if gate.task != task:
            rows.append({**row, "attention": gate.attention or "*", "status": "skipped",
                         "reason": f"gate is for task {gate.task}; this run is {task}"})
            continue
        for attention in [gate.attention] if gate.attention else sorted(cells.attention.unique()):
            value, n, why = _select(cells, gate, attention)
            base = math.nan
            if gate.value is not None:
                threshold = float(gate.value)
            else:
                folder = str(baseline_dir or gate.baseline)
                if folder not in baselines:
                    base_task, baselines[folder] = _cells(folder)
                    if base_task != task:
                        raise ConfigError(f"baseline {folder} is a {base_task} run; the candidate is {task}",
                                          "give a baseline of the same task")
                base, _, base_why = _select(baselines[folder], gate, attention)
                why = why or (base_why and f"baseline {folder}: {base_why}")
                threshold = base * gate.baseline_factor if gate.baseline_factor is not None else base + (gate.baseline_delta or 0.0)
            passed = why is None and OPS[gate.op](value, threshold)
            reason = why or f"{fmt(value)} {gate.op} {fmt(threshold)}" + ("" if passed else " is false")
            rows.append({**row, "attention": attention, "value": value, "threshold": threshold, "baseline": base,
                         "n": n, "status": "pass" if passed else "fail", "reason": reason})
    if all(r["status"] == "skipped" for r in rows):  # nothing was checked: that is no pass
        rows.append({"gate": "(no gate for this task)", "task": task, "metric": "", "op": "", "context_length": "all",
                     "attention": "*", "status": "fail", "reason": f"no gate in the file is for task {task}"})
    columns = ["gate", "task", "metric", "attention", "context_length", "op", "threshold", "value", "baseline", "n",
               "status", "reason"]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    frame["n"] = frame["n"].astype("Int64")  # skipped rows have none
    frame["passed"] = frame.status == "pass"
    counts = frame.status.value_counts()
    exit_code = int(counts.get("fail", 0) > 0)
    summary = {"candidate": str(candidate_dir), "task": task, "gates": len(gates), "checks": len(frame),
               **{k: int(counts.get(k, 0)) for k in ("pass", "fail", "skipped")}, "exit_code": exit_code}
    return GateReport(frame, summary, exit_code)


def _display(report: GateReport) -> pd.DataFrame:
    order = report.rows.sort_values("status", key=lambda s: s.map({"fail": 0, "pass": 1, "skipped": 2}), kind="stable")
    icon = {"fail": "❌ fail", "pass": "✅ pass", "skipped": "skipped"}
    return pd.DataFrame({"": order.status.map(icon), "gate": order.gate, "attention": order.attention,
                         "length": order.context_length, "value": order.value.map(fmt),
                         "threshold": order.threshold.map(fmt), "reason": order.reason}).astype(str)


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
        case = {"classname": f"evalkit.gate.{row['task']}.{row['attention']}", "name": f"{row['gate']}@{row['context_length']}"}
        if row["status"] != "pass":
            case["failure" if row["status"] == "fail" else "skipped"] = row["reason"]
        cases.append(case)
    return junit_xml(f"evalkit gate {report.summary['task']}", cases)


def to_rich_table(report: GateReport, limit: int = 50):
    table = _display(report)
    s = report.summary
    return rich_table(table, f"{s['task']}: {s['fail']} failed, {s['pass']} passed, {s['skipped']} skipped",
                      table[""].str.startswith("❌"), table[""].str.startswith("✅"), limit)
