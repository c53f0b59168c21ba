"""ABCDigits training sequences: ``K=DDDD`` lines with the retrieval signal marked.

The format is the one ``evalkit run needle --needle abcdigits --chat off`` evaluates with
(``evalkit.data.haystack``): single uppercase letter keys, each mapped to a random number of
``digits`` digits (no leading zero, distinct across keys) that stays fixed within a sequence;
lines ``K=DDDD\\n`` drawn at random; fewer than one line's worth of blank lines as padding; the
sequence cut after exactly ``length + 1`` tokens, so it may end inside a line, as an evaluation
prompt ends with its query ``K=``.

Each sequence draws how many keys it uses (2..26), so the same key comes back often in some
sequences and rarely in others. The padding newlines go at a random line boundary (the start
in the evaluation's haystack, but a needle at depth 0 sits before them).

``recall_mask`` marks the tokens that can be predicted only by retrieval: the digits of a line
whose key already appeared earlier in the sequence. The training loss is on those tokens.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from evalkit.reference.tokenizer import char_ids

KEYS = string.ascii_uppercase
_DIGIT_IDS = np.asarray(char_ids("0123456789"), np.int64)


@dataclass(frozen=True, eq=False)
class AbcBatch:
    """``tokens[:, :-1]`` is the input, ``tokens[:, 1:]`` the target of each position."""

    tokens: np.ndarray  # (B, T + 1) int64
    recall_mask: np.ndarray  # (B, T + 1) bool: token t is a digit of a repeated key's line
    line_ids: np.ndarray  # (B, T + 1) int64: index of the line token t belongs to, -1 for padding
    mappings: list[dict[str, str]]  # per sequence: key -> value

    @property
    def inputs(self) -> np.ndarray:
        return self.tokens[:, :-1]  # (B, T)

    @property
    def targets(self) -> np.ndarray:
        return self.tokens[:, 1:]  # (B, T)

    @property
    def target_mask(self) -> np.ndarray:
        return self.recall_mask[:, 1:]  # (B, T)


def _values(rng: np.random.Generator, count: int, digits: int) -> list[str]:
    """Distinct numbers of ``digits`` digits without a leading zero (as the needle task draws them)."""
    low, high = 10 ** (digits - 1), 10**digits
    picked = rng.choice(high - low, size=count, replace=False) + low if high - low < 1 << 20 else None
    if picked is None:  # many digits: rejection sampling is cheap and exact
        seen: dict[int, None] = {}
        while len(seen) < count:
            seen.setdefault(int(rng.integers(low, high)), None)
        picked = list(seen)
    return [str(int(v)) for v in picked]


def abc_sequence(rng: np.random.Generator, length: int, digits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """One sequence of ``length + 1`` tokens: (tokens, recall_mask, line_ids, mapping)."""
    mapping = dict(zip(KEYS, _values(rng, len(KEYS), digits)))
    used = rng.choice(len(KEYS), size=int(rng.integers(2, len(KEYS) + 1)), replace=False)
    line_len = digits + 3  # "K=" + digits + "\n"
    lines = rng.choice(used, size=length // line_len + 2)
    pad = int(rng.integers(line_len))  # blank lines, fewer than one line's tokens
    pad_at = int(rng.integers(len(lines) + 1))
    tokens, mask, line_ids, seen = [], [], [], set()
    for index, key_index in enumerate(lines):
        if index == pad_at:
            tokens += char_ids("\n" * pad)
            mask += [False] * pad
            line_ids += [-1] * pad
        key = KEYS[key_index]
        tokens += char_ids(f"{key}={mapping[key]}\n")
        repeated = key in seen
        mask += [False, False] + [repeated] * digits + [False]
        line_ids += [index] * line_len
        seen.add(key)
    n = length + 1
    return (np.asarray(tokens[:n], np.int64), np.asarray(mask[:n], bool), np.asarray(line_ids[:n], np.int64), mapping)


def abc_batch(rng: np.random.Generator, batch: int, length: int, digits: int) -> AbcBatch:
    """``batch`` sequences of ``length + 1`` tokens, drawn from ``rng`` in order."""
    parts = [abc_sequence(rng, length, digits) for _ in range(batch)]
    return AbcBatch(
        tokens=np.stack([p[0] for p in parts]),
        recall_mask=np.stack([p[1] for p in parts]),
        line_ids=np.stack([p[2] for p in parts]),
        mappings=[p[3] for p in parts],
    )


def is_digit_id(ids: np.ndarray) -> np.ndarray:
    return np.isin(ids, _DIGIT_IDS)
