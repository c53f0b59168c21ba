"""Choosing token windows from a corpus stream, reproducibly from a seed."""

from __future__ import annotations

import numpy as np

from evalkit.core.errors import DataError
from evalkit.data.corpus import TokenStream


def check_fits(stream: TokenStream, length: int) -> None:
    if len(stream.tokens) < length:
        raise DataError(
            f"corpus {stream.corpus} has {len(stream.tokens)} tokens, fewer than the context length {length}",
            "give a larger --dataset or shorter --lengths",
        )


def random_offsets(stream: TokenStream, length: int, count: int, seed: int, disjoint: bool = True) -> list[int]:
    """``count`` window starts for windows of ``length`` tokens, the same for the same seed.

    ``disjoint``: no two windows share a token, so each window is an independent unit of the
    intervals (two windows sharing 728 of 1,024 tokens are nearly one measurement, counted twice).
    The draw is uniform over the disjoint placements: the plain draw when it is disjoint (so runs
    whose windows never overlapped keep their offsets), else one from the gaps between windows.
    """
    check_fits(stream, length)
    total = len(stream.tokens)
    choices = total - length + 1
    rng = np.random.default_rng([seed, length])  # per length, so adding a length keeps the others
    offsets = sorted(int(o) for o in rng.choice(choices, size=count, replace=count > choices))
    if not disjoint or all(b - a >= length for a, b in zip(offsets, offsets[1:])):
        return offsets
    if count * length > total:
        raise DataError(
            f"{count} windows of {length} tokens do not fit in corpus {stream.corpus} ({total} tokens) "
            "without sharing tokens",
            f"give at most --samples {total // length}, or a larger --dataset",
        )
    # count distinct draws from (slack + count) places, each later window shifted past the ones before:
    # window i starts at u_i + i * (length - 1), so starts are >= length apart and the last ends by the end
    slack = total - count * length
    places = np.sort(np.random.default_rng([seed, length, 1]).choice(slack + count, size=count, replace=False))
    return [int(u) + i * (length - 1) for i, u in enumerate(places)]


def effective_stride(length: int, stride: int) -> int:
    """The stride actually used for windows of ``length`` tokens: at most ``length - 1``.

    A window scores its positions 1..length-1 (position 0 has nothing to be predicted from), so
    consecutive windows must overlap by at least one token or the token between them is never
    scored: with stride = length, the first token of every later window was skipped.
    """
    return max(1, min(stride, length - 1))


def stride_plan(total: int, length: int, stride: int) -> list[tuple[int, int]]:
    """(window start, first scored position in the window) for sliding windows over ``total`` tokens.

    Every position 1..total-1 is scored exactly once; each with at least ``length - stride``
    tokens of context (except in the first window); the last window is aligned to the end, scoring
    only what is left. ``stride`` is capped by ``effective_stride``. A stream shorter than
    ``length`` gets one window of its own length.
    """
    length = min(length, total)
    if length < 2:
        return []
    stride = effective_stride(length, stride)
    windows, scored_until, begin = [], 1, 0  # scored_until: the first stream position not scored yet
    while scored_until < total:
        begin = min(begin, total - length)
        windows.append((begin, scored_until - begin))
        scored_until = begin + length
        begin += stride
    return windows


def strided_windows(stream: TokenStream, length: int, stride: int) -> list[tuple[int, int]]:
    """Classic sliding-window perplexity over the whole stream (see ``stride_plan``)."""
    check_fits(stream, length)
    return stride_plan(len(stream.tokens), length, stride)


def document_windows(stream: TokenStream, length: int) -> list[tuple[int, int, int, int]]:
    """lm-eval's ``loglikelihood_rolling`` windows, per document: (document, start, tokens, first scored).

    ``stream`` holds each document as [prefix token] + its tokens (``corpus.lm_eval_stream``).
    lm-eval (lm_eval/utils.py ``get_rolling_token_windows`` with ``context_len=1``, then
    ``make_disjoint_window``) feeds the model ``length`` tokens and scores the tokens they predict:
    the first window is the prefix + the first length-1 tokens, predicting the first ``length``;
    each next one predicts the next ``length`` tokens from the ``length`` before them; the last
    is aligned to the document's end and predicts only what is left. As windows of
    ``length + 1`` tokens (inputs + the last target) that is ``stride_plan`` with stride
    ``length`` on each document's own stream, never crossing a document boundary (a document
    shorter than that is one window of its own length).
    """
    ends = np.append(stream.doc_starts[1:], len(stream.tokens))
    out = []
    for doc, (start, end) in enumerate(zip(stream.doc_starts.tolist(), ends.tolist())):
        size = min(length + 1, end - start)
        out += [(doc, start + begin, size, first) for begin, first in stride_plan(end - start, length + 1, length)]
    return out
