"""Tolerances: how much worse a metric may get before compare calls it a regression, the float floor
always added, and per-metric tolerances from ``--tolerances FILE`` (one TOML table, checked whole).
Which way is worse is each metric's own declaration (``evalkit.core.metrics``, written by its task).

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
from dataclasses import dataclass
from pathlib import Path

from evalkit.core.errors import ConfigError


@dataclass(frozen=True)
class Tolerance:
    """Allowed worsening: ``absolute`` in metric units plus ``relative`` times |baseline| (numpy's atol + rtol)."""

    absolute: float | None = None
    relative: float | None = None

    def allowed(self, baseline: float) -> float:
        return (self.absolute or 0.0) + (self.relative or 0.0) * abs(baseline)


# Always added to the user's tolerance. The same prompts scored on another device, batch size or
# kernel differ in float32 by ~1e-7 relative (transformers' sdpa vs eager: 2e-7, design.md); a
# mean over a few thousand such values keeps that order. 1e-6 relative is 5x above it and 1e-4 of
# the smallest accuracy step of a 100-trial cell; 1e-9 absolute covers baselines at zero.
FLOAT_TOLERANCE = Tolerance(absolute=1e-9, relative=1e-6)


def load_tolerances(path: str | Path, judged: set[str] | None = None):
    """``{metric: Tolerance}`` from a TOML file; every mistake in it reported at once. ``judged``: the
    metrics it may name (those some task declares with a direction); None: any."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tolerances file {path} not found", "pass --tolerances a TOML file: metric = tolerance")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "write lines like: mean_nll = 0.01") from None
    known = sorted(judged or ())
    out, errors = {}, []
    for metric, value in data.items():
        if judged is not None and metric not in judged:
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
        hint = f"judged metrics: {', '.join(known)}" if known else "write lines like: mean_nll = 0.01"
        raise ConfigError(f"{path}: {' | '.join(errors)}", hint)
    return out


def _valid(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
