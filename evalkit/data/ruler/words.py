"""RULER's aggregation tasks: common words extraction (cwe) and frequent words extraction (fwe).

cwe (RULER's ``common_words_extraction.py``, synthetic.yaml freq_cw 30, freq_ucw 3, num_cw 10): a numbered
list where 10 words appear 30 times and every other word 3 times (6 and 1 below 4096 tokens, as RULER);
the model names the 10 common ones. Words are RULER's own list: wonderwords' nouns, adjectives and verbs
(8,166 distinct; only single lowercase words kept). A worked example with its answer precedes the task.

fwe (``freq_words_extraction.py``, alpha 2.0): random 6-letter coded words with Zipf counts
``floor(N k^-alpha / zeta(alpha))`` for rank k over a vocabulary of ``length // 50`` words; rank 1 is
the noise word "...", ranks 2-4 are the answer.

Each list item is tokenized on its own, so the list's token count is a sum and the longest list that
fits is found without re-tokenizing. The few tokens a whole step cannot fill become newline tokens after
the list (``pad_tokens`` in the provenance; fwe uses more "..." noise words when "..." is one token), so
prompts are exactly ``length`` tokens.
"""

from __future__ import annotations

import math
import re
import string
from functools import lru_cache

import numpy as np

from evalkit.core.errors import ConfigError, DataError
from evalkit.data.haystack import _encode
from evalkit.data.ruler import PromptFrame, RulerSample, RulerSource, register

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the "
    "above list?"
)
CWE_PREFIX = "Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words.{context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"
NUM_CW = 10
ALPHA = 2.0
ZETA = math.pi**2 / 6  # zeta(ALPHA) for ALPHA 2
CODED_LEN = 6


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    try:
        from wonderwords import random_word
    except ImportError as e:
        raise DataError("cwe needs RULER's word list from the wonderwords package", "pip install wonderwords") from e
    words = {
        w
        for f in ("nounlist.txt", "adjectivelist.txt", "verblist.txt")
        for w in random_word._get_words_from_text_file(f)
    }
    return tuple(sorted(w for w in words if re.fullmatch(r"[a-z]+", w)))  # multi-word entries would blur what a word is


@lru_cache(maxsize=4)
def _word_ids(tokenizer) -> list[list[int]]:
    """Each word as it follows a space in the list, tokenized once per tokenizer."""
    return tokenizer([" " + w for w in word_list()], add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=16)
def _number_ids(tokenizer, upto: int) -> tuple[list[list[int]], np.ndarray]:
    """The item numbers "1.", " 2.", ... " upto." and their cumulative token counts (index 0: no item)."""
    ids = tokenizer([("" if i == 1 else " ") + f"{i}." for i in range(1, upto + 1)], add_special_tokens=False)[
        "input_ids"
    ]
    return ids, np.concatenate([[0], np.cumsum([len(x) for x in ids])])


def _pad(tok, frame: PromptFrame, length: int, context: list[int]) -> tuple[list[int], int]:
    """Newline tokens for what is left after the longest list that fits (fewer than one item's tokens)."""
    left = frame.budget(length) - len(context)
    newline = _encode(tok, "\n")
    return (context + newline * left, left) if len(newline) == 1 else (context, 0)


def _cwe_list(rng, words: list, cw: int, ucw: int) -> list:
    items = words[:NUM_CW] * cw + words[NUM_CW:] * ucw
    return [items[i] for i in rng.permutation(len(items))]


def _numbered(items: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))


@register("cwe")
def build_cwe(source: RulerSource, length: int, index: int) -> RulerSample:
    rng, tok, words = source.rng("cwe", length, index), source.tokenizer, word_list()
    (ex_n, ex_cw, ex_ucw), (cw, ucw) = (
        ((20, 3, 1), (6, 1)) if length < 4096 else ((40, 10, 3), (30, 3))
    )  # RULER's switch
    order = rng.permutation(len(words))
    example_words = [words[i] for i in order[-ex_n:]]  # the example's words never appear in the task's list
    example = CWE_TEMPLATE.format(context=_numbered(_cwe_list(rng, example_words, ex_cw, ex_ucw)))
    example += f" {CWE_PREFIX} {_numbered(example_words[:NUM_CW])}"
    before, after = CWE_TEMPLATE.split("{context}")
    frame = PromptFrame.build(tok, source.chat, example + "\n" + before, after, CWE_PREFIX)
    budget = frame.budget(length)

    # tokens of a list with n distinct words: its numbers plus each word's tokens times its count
    pool = order[:-ex_n]
    word_ids = _word_ids(tok)
    word_tokens = np.array([len(word_ids[i]) for i in pool])
    n_max = min(len(pool), NUM_CW + max(0, (budget // 2 - NUM_CW * cw) // ucw))  # every item is 2+ tokens
    n = np.arange(NUM_CW, n_max + 1)
    items = NUM_CW * cw + (n - NUM_CW) * ucw
    number_ids, numbers = _number_ids(tok, 1 << int(items[-1]).bit_length())
    tokens = (
        numbers[items]
        + cw * word_tokens[:NUM_CW].sum()
        + ucw * np.concatenate([[0], np.cumsum(word_tokens[NUM_CW:n_max])])
    )
    fits = np.flatnonzero(tokens <= budget)
    if not len(fits):
        raise ConfigError(
            f"context length {length} is too short for cwe: 10 words x {cw} need {int(tokens[0])} tokens, "
            f"{budget} are left",
            "use longer lengths",
        )
    picked = pool[: int(n[fits[-1]])].tolist()
    chosen = [words[i] for i in picked]
    items = _cwe_list(rng, picked, cw, ucw)
    context = [t for i, w in enumerate(items) for t in number_ids[i] + word_ids[w]]
    exhausted = len(chosen) == len(pool)  # every word used: the shortfall is not a part-item, leave it
    context, pad = (context, 0) if exhausted else _pad(tok, frame, length, context)
    prompt = frame.assemble(context)
    provenance = {
        "seed": source.seed,
        "words": "wonderwords nouns+adjectives+verbs",
        "num_words": len(chosen),
        "freq_cw": cw,
        "freq_ucw": ucw,
        "common": chosen[:NUM_CW],
        "items": len(items),
        "pad_tokens": pad,
        "example_words": example_words,
        "chat": source.chat,
    }
    return RulerSample("cwe", length, index, prompt, tuple(chosen[:NUM_CW]), None, provenance)


def zipf_counts(num_words: int, vocab: int) -> np.ndarray:
    """RULER's counts: floor(N k^-alpha / zeta(alpha)) for ranks k = 1..vocab."""
    return (num_words * np.arange(1, vocab + 1, dtype=float) ** -ALPHA / ZETA).astype(np.int64)


@register("fwe")
def build_fwe(source: RulerSource, length: int, index: int) -> RulerSample:
    rng, tok = source.rng("fwe", length, index), source.tokenizer
    size = length // 50  # RULER's vocab_size
    if size < 5:
        raise ConfigError(
            f"context length {length} is too short for fwe (a vocabulary of {size} coded words)",
            "use 250 tokens or more",
        )
    vocab: dict[str, None] = {}
    while len(vocab) < size - 1:
        vocab.setdefault("".join(rng.choice(list(string.ascii_lowercase), size=CODED_LEN)), None)
    vocab = ["...", *vocab]  # rank 1 is noise, as RULER
    before, after = FWE_TEMPLATE.split("{context}")
    frame = PromptFrame.build(tok, source.chat, before, after, FWE_PREFIX)
    budget = frame.budget(length)
    pieces = tok([" " + w for w in vocab], add_special_tokens=False)["input_ids"]
    sizes = np.array([len(p) for p in pieces])
    low, high = (
        0,
        budget + size + 1,
    )  # counts sum to at least N - size, each word 1+ token: N = budget + size + 1 never fits
    while high - low > 1:  # the largest N whose list fits
        mid = (low + high) // 2
        low, high = (mid, high) if zipf_counts(mid, size) @ sizes <= budget else (low, mid)
    counts = zipf_counts(low, size)
    if not counts[1] > counts[2] > counts[3] > counts[4]:
        raise ConfigError(
            f"context length {length} is too short for fwe: the top counts {counts[1:5].tolist()} tie",
            "use longer lengths",
        )
    pad = budget - int(counts @ sizes)
    if sizes[0] == 1:  # fill the part-step left over with more of the noise word the model is told to ignore
        counts[0], pad = counts[0] + pad, 0
    ranks = np.repeat(np.arange(size), counts)[rng.permutation(int(counts.sum()))]
    context, pad = _pad(tok, frame, length, [t for r in ranks for t in pieces[r]])
    prompt = frame.assemble(context)
    provenance = {
        "seed": source.seed,
        "alpha": ALPHA,
        "num_words": low,
        "vocab": vocab,
        "counts": counts.tolist(),
        "pad_tokens": pad,
        "chat": source.chat,
    }
    return RulerSample("fwe", length, index, prompt, tuple(vocab[1:4]), None, provenance)
