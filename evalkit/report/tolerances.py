"""Per-metric tolerances for ``evalkit compare --tolerances FILE``: one TOML table, checked whole.

Each key is a metric; its value is an absolute tolerance in the metric's units, or a table with
``absolute`` and/or ``relative`` (a fraction of |baseline|), as ``Tolerance`` adds them. The
perplexity row follows ``mean_nll``'s tolerance through exp unless ``perplexity`` has its own.

    mean_nll = 0.01                         # nats per token
    greedy_correct = { absolute = 0.05 }    # five accuracy points
    answer_logprob = { relative = 0.02 }    # 2% of the baseline's log-prob
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from evalkit.errors import ConfigError


def load_tolerances(path: str | Path):
    """``{metric: Tolerance}`` from a TOML file; every mistake in it reported at once."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from evalkit.report.compare import METRIC_DIRECTIONS, Tolerance

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tolerances file {path} not found", "pass --tolerances a TOML file: metric = tolerance")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "write lines like: mean_nll = 0.01") from None
    known = sorted(METRIC_DIRECTIONS)
    out, errors = {}, []
    for metric, value in data.items():
        if metric not in METRIC_DIRECTIONS:
            close = difflib.get_close_matches(metric, known, n=1)
            errors.append(f"{metric!r} is not a judged metric" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        parts = value if isinstance(value, dict) else {"absolute": value}
        if set(parts) - {"absolute", "relative"} or not parts:
            errors.append(f"{metric}: give a number, or a table with absolute and/or relative")
            continue
        if any(not _valid(v) for v in parts.values()):
            errors.append(f"{metric}: tolerances must be finite numbers >= 0")
            continue
        out[metric] = Tolerance(absolute=parts.get("absolute"), relative=parts.get("relative"))
    if errors:
        raise ConfigError(f"{path}: {' | '.join(errors)}", f"judged metrics: {', '.join(known)}")
    return out


def _valid(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
