"""Report formats shared by compare and gate: markdown for a pull-request comment, JSON, JUnit XML
for CI, rich for the terminal."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd


def fmt(value, spec: str = ".5g") -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return (
        format(value, spec)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        else str(value)
    )


# What an effective context length is called when even the shortest tested length falls below the
# threshold: the one word every output uses (terminal summary, compare, gate, figure legends).
NO_LENGTH = "none"


def length_text(n, short: bool = False) -> str:
    """A context length as tables write it (2048), or as axes do (``short``: 2k); NO_LENGTH when missing."""
    if n is None or n is pd.NA or (isinstance(n, float) and math.isnan(n)):
        return NO_LENGTH
    if short:
        from evalkit.core.grid import format_length

        return format_length(int(n))
    return str(int(n))


def effective_length_text(value, low, high, short: bool = False) -> str:
    """'1024 [none, 2048]': an effective length with its 95% interval, 'none' where no length passes."""
    return f"{length_text(value, short)} [{length_text(low, short)}, {length_text(high, short)}]"


def interval(low, high, spec: str = ".3g") -> str:
    return (
        "–" if low is None or (isinstance(low, float) and math.isnan(low)) else f"[{fmt(low, spec)}, {fmt(high, spec)}]"
    )


def markdown_table(table: pd.DataFrame, limit: int = 50) -> str:
    shown = table.head(limit)
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in shown.itertuples(index=False)]
    if len(table) > limit:
        lines.append(f"\n_{len(table) - limit} more rows omitted; the JSON and JUnit reports hold them all._")
    return "\n".join(lines)


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))


def junit_xml(suite: str, cases: list[dict]) -> str:
    """cases: dicts with classname, name, and optionally failure / skipped (a message), text, system_out."""
    failures = sum("failure" in case for case in cases)
    skipped = sum("skipped" in case for case in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", name="evalkit", **counts)
    tsuite = ET.SubElement(root, "testsuite", name=suite, **counts)
    for case in cases:
        node = ET.SubElement(tsuite, "testcase", classname=case["classname"], name=case["name"], time="0")
        for kind in ("failure", "skipped"):
            if kind in case:
                ET.SubElement(node, kind, message=case[kind], type=kind).text = case.get("text", "")
        if "system_out" in case:  # what a passing case measured
            ET.SubElement(node, "system-out").text = case["system_out"]
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def rich_table(
    table: pd.DataFrame, title: str, bad: pd.Series, good: pd.Series, limit: int = 50, caption: str | None = None
):
    from rich.table import Table
    from rich.text import Text

    omitted = f"{len(table) - limit} more rows omitted" if len(table) > limit else None
    out = Table(title=title, caption="\n".join(filter(None, [caption, omitted])) or None)
    left = ("", "attention", "metric", "keys", "gate", "reason", "check", "test", "variant")
    for column in table.columns:
        out.add_column(column, justify="left" if column in left else "right")
    for row, is_bad, is_good in list(zip(table.itertuples(index=False), bad, good))[:limit]:
        # Text, not markup: a cell such as "[none, 2048]" prints as it is whatever the console's markup setting
        out.add_row(*(Text(str(v)) for v in row), style="red" if is_bad else "green" if is_good else None)
    return out


def checks_table(checks: list[dict], title: str):
    """Run-level checks (complete, cells present, same options) as a rich table: failures in red."""
    frame = pd.DataFrame(
        {
            "": ["❌ fail" if not c["passed"] else "⚠ warn" if c.get("warning") else "✅ pass" for c in checks],
            "check": [c["check"] for c in checks],
            "reason": [c["reason"] for c in checks],
        }
    )
    return rich_table(frame, title, frame[""].str.startswith("❌"), frame[""].str.startswith("✅"), limit=len(frame))
