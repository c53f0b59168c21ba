"""Parsing of grid specs the user types: context lengths and percentages.

Lengths: ``512``, ``1k`` (k = 1024), ``1k,2k,8k``, or ``1k..32k`` (doubling from the first to
the last). Depth-like ranges: ``0:100:10`` (start:stop:step, stop included) or ``0,50,100``.
Layer lists: ``all``, ``nope``, ``rope`` or indices ``0,2,5``.
"""

from __future__ import annotations

import re
from typing import Any

from evalkit.core.errors import ConfigError

_LENGTH = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_length(text: str) -> int:
    match = _LENGTH.match(text)
    if not match:
        if re.fullmatch(r"\s*\d+\s*[kKmM]?\s*-\s*\d+\s*[kKmM]?\s*", text):
            low, _, high = text.partition("-")
            raise ConfigError(
                f"bad context length {text!r}", f"write a range with two dots: {low.strip()}..{high.strip()} (doubling)"
            )
        raise ConfigError(
            f"bad context length {text!r}",
            "write a number of tokens like 512, 4k or 1m (k = 1024), a list 1k,2k or a range 1k..16k",
        )
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
            if not lo_text.strip() or not hi_text.strip():
                side = "first" if not lo_text.strip() else "last"
                raise ConfigError(
                    f"length range {part.strip()!r} has no {side} length", "write both ends, e.g. 1k..32k"
                )
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


LAYER_GROUPS = ("all", "nope", "rope")


def canonical_layers(layers: Any) -> str:
    """--attention-layers as one canonical string: "all", "nope", "rope" or sorted "0,2,5"."""
    if isinstance(layers, (list, tuple)):
        layers = ",".join(str(i) for i in layers)
    text = str(layers).strip().lower().replace(" ", "")
    if text in LAYER_GROUPS:
        return text
    try:
        indices = sorted({int(part) for part in text.split(",")})
    except ValueError:
        indices = []
    if not indices or indices[0] < 0:
        raise ConfigError(
            f"bad --attention-layers {layers!r}",
            "use all, nope, rope or layer indices like 0,2,5",
        )
    return ",".join(map(str, indices))


def layer_indices(text: str) -> list[int]:
    """The layer indices a layer list names (``0,6,11``); [] for a group (all, nope, rope)."""
    canonical = canonical_layers(text)
    return [] if canonical in LAYER_GROUPS else [int(i) for i in canonical.split(",")]
