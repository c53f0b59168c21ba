"""Terminal tables never cut a column name or a value with an ellipsis: at 160 columns every name and
value prints whole; narrower, prose and long names wrap rather than lose characters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from evalkit.report.render import _name_parts, checks_table, rich_table, terminal_table


def printed(table, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(table)
    return console.export_text()


def compare_like():
    """Compare's cell table as a needle compare printed it (fifteen columns, names with spaces), where
    rich's own fitting cut "answer_logp…" at 160 columns."""
    metrics = ["answer_logprob", "greedy_correct"]
    rows = [
        {
            "": "",
            "attention": attention,
            "length": length,
            "metric": metric,
            "baseline": -0.4404,
            "candidate": -18.35,
            "delta": "+0",
            "95% CI": "[-0.123, +0.568]",
            "p (one-sided)": 0.0123,
            "adj. p": 1,
            "detectable": "⚠ –",
            "test": "paired t",
            "pairs": 6,
            "units": 2,
            "beyond noise": "regression",
        }
        for attention in ("softmax", "ssmax")
        for length in (1024, 131072)
        for metric in metrics
    ]
    return pd.DataFrame(rows)


def test_a_wide_table_at_160_columns_cuts_nothing():
    frame = compare_like()
    text = printed(rich_table(frame, "cells", frame.delta == "", frame.delta == ""), 160)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 160
    for value in ["answer_logprob", "greedy_correct", "regression", "131072", "-0.4404"]:
        assert value in text  # names and numbers whole (an interval may wrap at its space)
    assert "[-0.123," in text and "+0.568]" in text
    header = " ".join(text.split())
    for word in ("attention", "metric", "candidate", "(one-sided)", "detectable", "beyond", "noise"):
        assert word in header


@pytest.mark.parametrize("width", [60, 100])
def test_a_narrow_console_folds_instead_of_cutting(width):
    frame = compare_like()
    text = printed(terminal_table(frame, "cells"), width)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width


def test_prose_wraps_first_and_names_stay_whole():
    checks = [
        {
            "passed": True,
            "check": "comparable runs (seed, windows, task options, tokenizer, dtype, device)",
            "reason": "4 of 8 judged cells underpowered: "
            + "softmax@1024 greedy_correct (cannot reach p < 0.0063), " * 4,
        },
        {"passed": False, "check": "same prompts", "reason": "regression"},
    ]
    text = printed(checks_table(checks, "checks"), 120)
    assert "…" not in text and "✅ pass" in text and "❌ fail" in text  # the emoji's two cells counted
    assert "same prompts" in text and max(len(line) for line in text.splitlines()) <= 120


def test_run_summary_columns_print_whole(capsys):
    from evalkit.cli.common import print_frame
    from evalkit.report.stats import compact

    summary = pd.DataFrame(
        {
            "attention": ["softmax", "ssmax", "softmax"],
            "ruler_task": ["niah_multivalue", "niah_multivalue", "average"],
            "context_length": [1024, 1024, "all"],
            "n": [6, 6, 12],
            "units": [2, 2, 2],
            "score": [0.5, 0.25, 0.4],
            "score_ci_low": [0.1, 0.0, 0.2],
            "score_ci_high": [0.9, 0.8, 0.6],
            "answer_logprob": [-1.25, -2.5, np.nan],
            "answer_logprob_ci_low": [-2.0, -3.0, np.nan],
            "answer_logprob_ci_high": [-0.5, -1.0, np.nan],
            "greedy_correct": [0.5, 0.5, np.nan],
            "greedy_correct_ci_low": [0.1, 0.1, np.nan],
            "greedy_correct_ci_high": [0.9, 0.9, np.nan],
            "wavg_inc": [np.nan, np.nan, 0.4],
            "wavg_inc_ci_low": [np.nan, np.nan, 0.3],
            "wavg_inc_ci_high": [np.nan, np.nan, 0.5],
            "comparable": [None, None, "not RULER-comparable: 2 of 13 tasks"],
            "threshold": [np.nan, np.nan, 0.856],
            "effective_length": [np.nan, np.nan, np.nan],
            "effective_length_ci_low": [np.nan, np.nan, np.nan],
            "effective_length_ci_high": [np.nan, np.nan, 1024],
        }
    )
    console = Console(width=160, record=True, file=open("/dev/null", "w"), color_system=None)
    print_frame(console, compact(summary), "ruler summary (95% intervals): m")
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 160
    # too wide for one line each at 160: a name breaks after an underscore, never inside a word
    for name in ("answer_logprob", "greedy_correct", "effective_length", "comparable", "context_length"):
        assert name in text or all(piece in text for piece in _name_parts(name))
    assert "niah_multivalue" in text and "RULER-comparable:" in text
    assert "none [none," in text and "1024]" in text  # the one wording for no effective length
    assert compact(summary).effective_length.tolist() == ["-", "-", "none [none, 1024]"]


def test_a_table_too_wide_for_padding_drops_it_before_breaking_a_word():
    """RULER's compare at 160 columns: a 27-character per-task metric left no room for padded cells, and
    rich broke "attentio|n" and "regressio|n"; cells lose their padding first."""
    frame = compare_like()
    frame["attention"] = "softmax → ssmax"
    frame["metric"] = "string_match[niah_single_1]"
    frame[""] = "❌ regression"
    text = printed(rich_table(frame, "cells", frame.delta == "", frame.delta == ""), 160)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 160
    words = set(" ".join(text.replace("┃", " ").replace("│", " ").split()).split())
    for word in ("attention", "baseline", "candidate", "detectable", "regression", "string_match[niah_single_1]"):
        assert word in words
