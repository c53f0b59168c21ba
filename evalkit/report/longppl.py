"""LongPPL (Fang et al., ICLR 2025, "What is Wrong with Perplexity for Long-context Language Modeling?").

Perplexity averages every token, and most tokens need no long context. LongPPL averages only the
*key tokens*: those whose loss depends on the long context. An evaluator model scores each token
twice: with the full window before it, and with a short context only. The long-short difference
LSD = loss(short) - loss(full); a token is key when LSD > 2 and loss(full) < 2 (the paper's alpha
and -beta; PKU-ML/LongPPL ``find_key_token``). LongPPL = exp(mean full-context NLL of the key tokens).

Short context, as the paper's code: windows start at 0, stride, 2 stride, ... and hold
``short + stride`` tokens; each scores its last ``stride`` positions, so a token at position p >= short
is scored with between ``short`` and ``short + stride - 1`` tokens before it, and positions below
``short`` are never key (their short context is the full one). The window starting at 0 is the full
window's own prefix: under causal attention its losses are the full pass's, LSD = 0 exactly, so it
is never run. The plan depends on the window's start only, so one plan over the longest window
serves every shorter nested length (a position's short-context loss depends on the tokens from the
short window's start up to it, all inside the shorter window too).

Here tokens are counted per window: the unit of the interval is the window (its tokens share text),
LongPPL's interval is exp of the key-token NLL interval (``stats.mean`` with the window as cluster).
"""

from __future__ import annotations

import math

import numpy as np

LSD_THRESHOLD = 2.0
LOSS_THRESHOLD = 2.0
SHORT_CONTEXT = 4096
SHORT_STRIDE = 1024


def key_mask(short_nll, full_nll, lsd_threshold: float = LSD_THRESHOLD, loss_threshold: float = LOSS_THRESHOLD):
    """The paper's rule on aligned per-token losses: LSD > lsd_threshold and full-context loss < loss_threshold."""
    short_nll, full_nll = np.asarray(short_nll, dtype=np.float64), np.asarray(full_nll, dtype=np.float64)
    return ((short_nll - full_nll) > lsd_threshold) & (full_nll < loss_threshold)


def short_windows(length: int, short: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of the short-context passes over a window of ``length``
    tokens, the window at 0 left out (it is the full pass's prefix): window [b, min(b + short + stride, length))
    scores positions b + short .. end - 1 (a position p is predicted from tokens before it)."""
    out = []
    for begin in range(stride, max(length - short, 0), stride):
        out.append((begin, min(begin + short + stride, length), begin + short))
    return out


def short_context_tokens(length: int, short: int, stride: int) -> int:
    """Tokens the short passes run for one window of ``length``: the extra cost over plain perplexity."""
    return sum(end - begin for begin, end, _ in short_windows(length, short, stride))


def derive(frame, evaluator, options, first_variant: str | None = None):
    """The frame with LongPPL's rows added: ``key`` on every ``token_nll`` row (the evaluator's LSD rule),
    and one ``key_nll`` row per key token and variant holding that variant's full-context NLL, with the
    evaluator's two losses and LSD beside it. ``evaluator`` holds the evaluator's ``token_nll`` and
    ``short_nll`` rows (None: the run's first variant, scored in this run)."""
    import pandas as pd

    tokens = frame[frame.metric == "token_nll"]
    if tokens.empty:
        return frame
    if evaluator is None:
        first = first_variant or pd.unique(frame["attention"])[0]
        evaluator = frame[frame.attention == first]
    at = ["context_length", "sample", "position"]
    full = evaluator[evaluator.metric == "token_nll"].set_index(at)["value"].rename("evaluator_nll")
    short = evaluator[evaluator.metric == "short_nll"].set_index(at)["value"].rename("evaluator_short_nll")
    scores = pd.concat([full, short], axis=1).dropna()
    scores["lsd"] = scores.evaluator_short_nll - scores.evaluator_nll
    scores["key"] = key_mask(
        scores.evaluator_short_nll, scores.evaluator_nll, options.lsd_threshold, options.loss_threshold
    )
    index = pd.MultiIndex.from_frame(tokens[at].astype("int64"))
    key = scores["key"].reindex(index).fillna(False).to_numpy(dtype=bool)
    out = frame.copy()
    out["key"] = pd.Series(pd.NA, index=out.index, dtype="boolean")
    out.loc[tokens.index, "key"] = key
    keys = tokens[key].copy()
    keys["metric"] = "key_nll"
    detail = scores.reindex(pd.MultiIndex.from_frame(keys[at].astype("int64")))
    for column in ("evaluator_nll", "evaluator_short_nll", "lsd"):
        keys[column] = detail[column].to_numpy()
    return pd.concat([out, keys], ignore_index=True)


def summary_columns(part, length: int, units) -> dict:
    """LongPPL columns of one (variant, length) cell: LongPPL with its interval, key tokens and their share."""
    from evalkit.report import stats

    windows = int(part.loc[part.metric == "mean_nll", "sample"].nunique())
    scored = windows * (length - 1)
    keys = part[part.metric == "key_nll"]
    nll = stats.clipped(stats.mean(keys["value"], stats.unit_keys(keys, units)), 0.0, math.inf)
    return {
        "key_tokens": len(keys),
        "key_share": len(keys) / scored if scored else math.nan,
        "key_windows": int(keys["sample"].nunique()),
        **stats.columns(nll, "key_nll"),
        **stats.columns(nll.exp(), "longppl"),
    }
