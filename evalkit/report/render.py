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


# Columns of prose, which may wrap at any width; every other column is a name or a number, never cut.
PROSE = {"reason", "check", "note", "description", "formula", "text", "why"}
LEFT = {"", "attention", "metric", "keys", "gate", "reason", "check", "test", "variant"}


class TerminalTable:
    """A DataFrame as a rich table fitted to the console's width at print time, that never cuts a column
    name or a value with an ellipsis: prose columns (a check's reason) wrap first, then the names of
    columns whose name is longer than their values wrap at spaces ("p (one-sided)" over two lines); a
    name or a number is never broken. Cells are Text, not markup: "[none, 2048]" prints as it is."""

    def __init__(self, frame: pd.DataFrame, title: str, caption: str | None = None, styles=None, left=LEFT):
        self.frame, self.title, self.caption, self.left = frame, title, caption, left
        self.styles = styles if styles is not None else [None] * len(frame)

    def layout(self, room: int) -> tuple[list[int], list[str], int]:
        """Each column's width and heading: name and values on one line if they fit in ``room`` (borders
        and padding taken off); else, step by step until they fit: prose narrowed (not below 12 or its
        longest word), names wrapped at spaces, values wrapped at spaces (an interval over two lines), then
        names wrapped after an underscore ("effective_" over "length"). A word is never broken, nor cut,
        unless even that does not fit. Cells lose their one-space padding (the third value returned) before
        a word would be broken."""
        from rich.cells import cell_len  # terminal cells: an emoji takes two

        names = [str(c) for c in self.frame.columns]
        lines = [[line for v in self.frame[c] for line in str(v).split("\n")] for c in self.frame.columns]
        longest = [max(map(cell_len, values), default=0) for values in lines]
        word = [max((cell_len(w) for w in name.split()), default=0) for name in names]
        part = [max((cell_len(p) for p in _name_parts(name)), default=0) for name in names]
        value_word = [max((cell_len(w) for v in values for w in v.split()), default=0) for values in lines]
        prose = [name in PROSE for name in names]
        widths = [max(cell_len(name), n, 1) for name, n in zip(names, longest)]
        narrow = [max(w, min(12, n)) for w, n in zip(word, longest)]
        steps = [
            [narrow[i] if prose[i] else widths[i] for i in range(len(names))],
            [narrow[i] if prose[i] else max(word[i], longest[i], 1) for i in range(len(names))],
            [narrow[i] if prose[i] else max(word[i], value_word[i], 1) for i in range(len(names))],
            [max(part[i], min(12, longest[i]) if prose[i] else value_word[i], 1) for i in range(len(names))],
        ]
        natural = list(widths)
        for padding in (1, 0):
            widths = list(natural)
            inner = room - (1 + 2 * padding) * len(names) - 1  # a border per column, padding either side
            for least in steps:
                for i in sorted(range(len(names)), key=lambda i: least[i] - widths[i]):  # the most to give first
                    if sum(widths) <= inner:
                        break
                    widths[i] = max(least[i], widths[i] - (sum(widths) - inner))
            if sum(widths) <= inner:
                break
        headings = [name if word[i] <= widths[i] else _wrap_name(name, widths[i]) for i, name in enumerate(names)]
        return widths, headings, padding

    def table(self, room: int):
        from rich.table import Table
        from rich.text import Text

        widths, headings, padding = self.layout(room)
        out = Table(title=self.title, caption=self.caption, padding=(0, padding))
        for column, width, heading in zip(self.frame.columns, widths, headings):
            justify = "left" if column in self.left or str(column) in PROSE else "right"
            out.add_column(heading, justify=justify, width=width, overflow="fold")
        for row, style in zip(self.frame.itertuples(index=False), self.styles):
            out.add_row(*(Text(str(v)) for v in row), style=style)
        return out

    def __rich_console__(self, console, options):
        yield self.table(options.max_width)


def _name_parts(name: str) -> list[str]:
    """A column name's pieces where a heading may break: after a space or an underscore."""
    import re

    return [p for p in re.split(r"(?<=_)|\s+", name) if p]


def _wrap_name(name: str, width: int) -> str:
    """A heading over as many lines as ``width`` needs, broken only after an underscore or at a space."""
    lines: list[str] = []
    for piece in _name_parts(name):
        joined = lines[-1] + ("" if lines[-1].endswith("_") else " ") + piece if lines else piece
        if lines and len(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(piece)
    return "\n".join(lines)


def terminal_table(frame: pd.DataFrame, title: str, caption: str | None = None, styles=None, left=LEFT):
    return TerminalTable(frame, title, caption, styles, left)


def rich_table(
    table: pd.DataFrame, title: str, bad: pd.Series, good: pd.Series, limit: int = 50, caption: str | None = None
):
    omitted = f"{len(table) - limit} more rows omitted" if len(table) > limit else None
    shown = table.head(limit)
    styles = ["red" if is_bad else "green" if is_good else None for is_bad, is_good in zip(bad, good)][:limit]
    return terminal_table(shown, title, "\n".join(filter(None, [caption, omitted])) or None, styles)


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
