"""Parsing of grid specs the user types: context lengths and percentages.

Lengths: ``512``, ``1k`` (k = 1024), ``1k,2k,8k``, or ``1k..32k`` (doubling from the first to
the last). Depth-like ranges: ``0:100:10`` (start:stop:step, stop included) or ``0,50,100``.
"""

from __future__ import annotations

import re

from evalkit.core.errors import ConfigError

_LENGTH = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_length(text: str) -> int:
    match = _LENGTH.match(text)
    if not match:
        raise ConfigError(f"bad context length {text!r}", "write a number of tokens like 512, 4k or 1m (k = 1024)")
    value = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if value < 2:
        raise ConfigError(f"context length {text!r} is too short", "use at least 2 tokens")
    return value


def parse_lengths(text: str) -> list[int]:
    """``1k,2k`` -> [1024, 2048]; ``1k..8k`` -> [1024, 2048, 4096, 8192]."""
    lengths: list[int] = []
    for part in text.split(","):
        if ".." in part:
            lo_text, _, hi_text = part.partition("..")
            lo, hi = parse_length(lo_text), parse_length(hi_text)
            if hi < lo:
                raise ConfigError(f"length range {part!r} runs backwards", "write it as LOW..HIGH, e.g. 1k..32k")
            value = lo
            while value < hi:
                lengths.append(value)
                value *= 2
            lengths.append(hi)
        elif part.strip():
            lengths.append(parse_length(part))
    if not lengths:
        raise ConfigError(f"no context lengths in {text!r}", "give e.g. --lengths 1k,2k,4k or 1k..32k")
    return sorted(set(lengths))


def parse_percentages(text: str) -> list[float]:
    """``0:100:10`` -> [0, 10, ..., 100]; ``0,50,100`` -> [0, 50, 100]."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            values = [start + i * step for i in range(count)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"bad percentage list {text!r}", "write START:STOP:STEP like 0:100:10, or 0,50,100") from None
    if not values or any(v < 0 or v > 100 for v in values):
        raise ConfigError(f"percentages {text!r} must lie in 0..100", "e.g. 0:100:10")
    return values


def format_length(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)
