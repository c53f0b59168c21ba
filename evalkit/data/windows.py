"""Choosing token windows from a corpus stream, reproducibly from a seed."""

from __future__ import annotations

import numpy as np

from evalkit.data.corpus import TokenStream
from evalkit.errors import DataError


def check_fits(stream: TokenStream, length: int) -> None:
    if len(stream.tokens) < length:
        raise DataError(f"corpus {stream.corpus} has {len(stream.tokens)} tokens, fewer than the context length {length}",
                        "give a larger --dataset or shorter --lengths")


def random_offsets(stream: TokenStream, length: int, count: int, seed: int) -> list[int]:
    """``count`` window starts for windows of ``length`` tokens, the same for the same seed."""
    check_fits(stream, length)
    choices = len(stream.tokens) - length + 1
    rng = np.random.default_rng([seed, length])  # per length, so adding a length keeps the others
    offsets = rng.choice(choices, size=count, replace=count > choices)
    return sorted(int(o) for o in offsets)


def strided_windows(stream: TokenStream, length: int, stride: int) -> list[tuple[int, int]]:
    """Classic sliding-window perplexity: (window start, first scored position in the window).

    Every token after the first is scored exactly once, each with at least ``length - stride``
    tokens of context (except near the start); the last window is aligned to the end.
    """
    check_fits(stream, length)
    total = len(stream.tokens)
    windows, scored_until = [], 0
    begin = 0
    while scored_until < total:
        begin = min(begin, total - length)
        first = max(1, scored_until - begin)
        windows.append((begin, first))
        scored_until = begin + length
        begin += stride
    return windows
