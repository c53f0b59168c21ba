"""RULER's eight needle-in-a-haystack tasks (scripts/synthetic.yaml, scripts/data/synthetic/niah.py).

A needle is RULER's sentence ``One of the special magic {numbers|uuids} for KEY is: VALUE.``. The
haystack is one of RULER's three:

- ``repeat``: the noise line ``The grass is green. ... There and back again.`` once per line;
- ``essay``: running text, here the corpus token stream (``--dataset``, the built-in corpus by
  default) read from a random offset, needles at the sentence boundaries nearest depths drawn
  from RULER's 40 depths, without replacement;
- ``needle``: lines that are themselves needles, for other keys (and other values).

Line haystacks put the needles between lines at random places, as RULER does. Their lines never
fill the budget exactly, so the leftover tokens (fewer than one line) open the context as the
tail of the noise line; ``filler_tokens`` in the provenance says how many. Every key in a
prompt is distinct, and no value of a line in a needle haystack equals an answer, so each
answer is in the haystack exactly once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from evalkit.core.errors import ConfigError, DataError
from evalkit.data import haystack as hs
from evalkit.data.ruler import PromptFrame, RulerSample, RulerSource, register

NEEDLE = "One of the special magic {kind} for {key} is: {value}."
DEPTHS = np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)  # RULER's depths, in percent
DIGITS = 7  # RULER's numbers


@dataclass(frozen=True)
class Spec:
    haystack: str  # "repeat" | "essay" | "needle"
    key: str  # "words" | "numbers" | "uuids"
    value: str  # "numbers" | "uuids"
    keys: int = 1  # num_needle_k
    values: int = 1  # num_needle_v
    queries: int = 1  # num_needle_q


SPECS = {
    "niah_single_1": Spec("repeat", "words", "numbers"),
    "niah_single_2": Spec("essay", "words", "numbers"),
    "niah_single_3": Spec("essay", "words", "uuids"),
    "niah_multikey_1": Spec("essay", "words", "numbers", keys=4),
    "niah_multikey_2": Spec("needle", "words", "numbers"),
    "niah_multikey_3": Spec("needle", "uuids", "uuids"),
    "niah_multivalue": Spec("essay", "words", "numbers", values=4),
    "niah_multiquery": Spec("essay", "words", "numbers", keys=4, queries=4),
}


class _Draw:
    """Distinct random keys and values of RULER's kinds from one sample's generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.seen = rng, set()
        self._words = None

    def _word(self) -> str:
        if self._words is None:  # every adjective-noun pair once, in random order
            self._words = iter(self.rng.permutation(len(hs._ADJECTIVES) * len(hs._NOUNS)).tolist())
        c = next(self._words, None)
        if c is None:
            raise DataError(
                f"the {len(hs._ADJECTIVES) * len(hs._NOUNS)} word keys are used up in one prompt",
                "use shorter --lengths for this needle-haystack task",
            )
        return f"{hs._ADJECTIVES[c // len(hs._NOUNS)]}-{hs._NOUNS[c % len(hs._NOUNS)]}"

    def one(self, kind: str) -> str:
        while True:
            if kind == "words":
                item = self._word()
            elif kind == "numbers":
                item = str(int(self.rng.integers(10 ** (DIGITS - 1), 10**DIGITS)))
            else:  # RULER: uuid.UUID(int=random.getrandbits(128), version=4)
                item = str(uuid.UUID(int=int.from_bytes(self.rng.bytes(16), "big"), version=4))
            if item not in self.seen:
                self.seen.add(item)
                return item

    def many(self, kind: str, count: int) -> list[str]:
        return [self.one(kind) for _ in range(count)]


def _encode(tokenizer, text: str) -> np.ndarray:
    return np.asarray(hs._encode(tokenizer, text), np.int64)


_BUILDERS: dict[int, tuple[RulerSource, hs._Builder]] = {}


def _essay_builder(source: RulerSource) -> hs._Builder:
    """The haystack module's corpus reader and sentence boundaries, one per source (the stream is read once)."""
    held = _BUILDERS.get(id(source))
    if held is None or held[0] is not source:
        held = _BUILDERS[id(source)] = (
            source,
            hs._Builder(source.tokenizer, hs.HaystackOptions(chat=source.chat), source.stream),
        )
    return held[1]


def _essay(source: RulerSource, budget: int, needles: list[np.ndarray], rng) -> tuple[np.ndarray, list[int], dict]:
    """Corpus text of exactly ``budget`` tokens with the needles at sentence boundaries near random RULER depths."""
    builder = _essay_builder(source)
    n = budget - sum(map(len, needles))
    hay, info = builder.haystack(n, rng, None)
    bounds = builder.boundaries.positions(hay)
    # the needle is a sentence that starts with a space: put it where the next sentence also does (or at the end)
    spaced = bounds[(bounds == n) | builder.boundaries.lead[hay[np.minimum(bounds, n - 1)]]] if n else bounds
    bounds = spaced if len(spaced) >= len(needles) else bounds
    if len(bounds) < len(needles):
        bounds = np.arange(n + 1)
    depths = rng.choice(DEPTHS, size=len(needles), replace=False)
    where: list[int] = []
    for depth in depths:  # the nearest boundary not taken yet: k needles, k distinct places
        free = bounds[~np.isin(bounds, where)]
        where.append(int(free[np.argmin(np.abs(free - depth / 100 * n))]))
    pieces, starts, last, cursor = [], [], 0, 0
    for i in np.argsort(where, kind="stable"):
        pieces += [hay[last : where[i]], needles[i]]
        cursor += where[i] - last
        starts.append((int(i), cursor))
        cursor, last = cursor + len(needles[i]), where[i]
    pieces.append(hay[last:])
    offsets = [at for _, at in sorted(starts)]
    return np.concatenate(pieces), offsets, {**info, "haystack_tokens": int(n), "depths": [int(d) for d in depths]}


def _lines(
    source: RulerSource, spec: Spec, budget: int, needles: list[np.ndarray], draw: _Draw, rng, answers: set[str]
) -> tuple[np.ndarray, list[int], dict]:
    """Whole lines (noise, or needles of other keys) with the needles between them at random places."""
    tok = source.tokenizer
    noise = _encode(tok, hs.NOISE + "\n")
    room = budget - sum(map(len, needles))
    lines: list[np.ndarray] = []
    if spec.haystack == "repeat":
        lines = [noise] * max(room // len(noise), 0)
        room -= len(noise) * len(lines)
    else:
        kind = spec.value
        while True:  # a batch of lines at a time: tokenizing thousands of lines one by one is slow
            batch = max(8, room // 24)
            texts = []
            for _ in range(batch):
                value = draw.one(kind)
                while value in answers:
                    value = draw.one(kind)
                texts.append(NEEDLE.format(kind=spec.value, key=draw.one(spec.key), value=value) + "\n")
            encoded = tok(texts, add_special_tokens=False)["input_ids"]
            full = False
            for ids in encoded:
                if len(ids) > room:
                    full = True
                    break
                lines.append(np.asarray(ids, np.int64))
                room -= len(ids)
            if full:
                break
    filler = np.tile(noise, room // len(noise) + 1)[-room:] if room else noise[:0]
    gaps = rng.choice(len(lines) + 1, size=len(needles), replace=len(lines) + 1 < len(needles))
    order = sorted(range(len(needles)), key=lambda i: gaps[i])
    pieces, offsets, cursor, last = [filler], [0] * len(needles), len(filler), 0
    for i in order:
        between = lines[last : gaps[i]]
        pieces += between
        cursor += sum(map(len, between))
        pieces.append(needles[i])
        offsets[i], cursor, last = cursor, cursor + len(needles[i]), int(gaps[i])
    pieces += lines[last:]
    return (
        np.concatenate(pieces),
        offsets,
        {
            "haystack_source": "noise" if spec.haystack == "repeat" else "needles",
            "haystack_lines": len(lines),
            "filler_tokens": int(room),
        },
    )


def _query_text(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def build_niah(name: str, source: RulerSource, length: int, index: int) -> RulerSample:
    spec = SPECS[name]
    seed = [source.seed % 2**63, sum(name.encode()), len(name), length, index]  # = source.rng(name, length, index)
    rng = source.rng(name, length, index)
    draw = _Draw(rng)
    keys = draw.many(spec.key, max(spec.keys, spec.queries))
    values = [draw.many(spec.value, spec.values) for _ in keys]
    texts = [NEEDLE.format(kind=spec.value, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    texts = [texts[i] for i in rng.permutation(len(texts))]  # RULER shuffles its needles
    asked = [int(i) for i in rng.choice(len(keys), size=spec.queries, replace=False)]
    answers = [v for i in asked for v in values[i]]
    query = _query_text([keys[i] for i in asked])

    one = spec.queries * spec.values == 1  # RULER's singular wording
    noun = spec.value[:-1] if one else spec.value
    before = (
        f"{'A' if one else 'Some'} special magic {noun} {'is' if one else 'are'} hidden within the following text. "
        f"Make sure to memorize it. I will quiz you about the {noun} afterwards.\n"
    )
    question = f"What {'is' if one else 'are all'} the special magic {noun} for {query} mentioned in the provided text?"
    prefix = f"The special magic {noun} for {query} mentioned in the provided text {'is' if one else 'are'}"
    essay = spec.haystack == "essay"
    frame = PromptFrame.build(
        source.tokenizer,
        source.chat,
        before,
        ("\n" if essay else "") + question,
        prefix,
        answers[0] if len(answers) == 1 else None,
    )
    budget = frame.budget(length)
    sep = " " if essay else ""  # sentences in running text; whole lines otherwise
    needles = [_encode(source.tokenizer, sep + t + ("" if essay else "\n")) for t in texts]
    if budget < sum(map(len, needles)):
        raise ConfigError(
            f"context length {length} is too short for RULER's {name}",
            f"use lengths of at least {length - budget + sum(map(len, needles))} tokens",
        )
    if essay:
        context, offsets, info = _essay(source, budget, needles, rng)
    else:
        context, offsets, info = _lines(source, spec, budget, needles, draw, rng, set(answers))
    prompt = frame.assemble(context)
    assert len(prompt) == length, (len(prompt), length)  # exact by construction
    spans = [(frame.context_start + at, frame.context_start + at + len(n)) for at, n in zip(offsets, needles)]
    provenance = {
        "haystack": spec.haystack,
        **info,
        "context_start": frame.context_start,
        "context_tokens": budget,
        "needles": texts,
        "needle_spans": spans,
        "keys": keys,
        "values": values,
        "queries": [keys[i] for i in asked],
        "question": question,
        "answer_prefix": prefix,
        "chat": hs._chat_parts(source.tokenizer, source.chat) is not None,
        "seed": seed,
    }
    return RulerSample(name, length, index, prompt, tuple(answers), frame.answer_ids, provenance)


for _name in SPECS:
    register(_name)(lambda source, length, index, _name=_name: build_niah(_name, source, length, index))
