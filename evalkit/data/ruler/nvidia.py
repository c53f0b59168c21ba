"""RULER's prompts as NVIDIA's generator builds them (protocol ``nvidia``), so scores sit beside published tables.

NVIDIA's generator (``scripts/data/synthetic/*.py`` in NVIDIA/RULER) fits the prompt *and* the task's
generation budget inside the length, searches the haystack size (essay words, noise lines, needle
lines, noise lines for vt, distinct words for cwe, documents for qa) by bisection on whole units, and
draws everything from one Python ``random`` stream (and numpy's legacy global stream for vt) seeded
once per (task, length), sample after sample. This module follows the same draws in the same order,
so for the same seed, tokenizer and haystack text the prompts are the same strings, token for token
(``tests/test_ruler_golden.py`` holds prompts NVIDIA's scripts wrote). The code is evalkit's own; only
the facts of RULER's protocol (templates, counts, draw order) are taken from it.

Consequences users meet: sample ``i`` depends on samples ``0..i-1`` of its (task, length) and on the
search, so the samples of one (task, length) are built together (``nvidia_tasks.build_many``); prompts are shorter
than ``--lengths`` by the generation budget and whatever the coarse search leaves (RULER reports 91%
of the length on average); the model sees ``input + answer_prefix`` tokenized as RULER's HF wrapper
does (``tokenizer(text)``, special tokens included).
"""

from __future__ import annotations

import bisect
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError, DataError

RULER_SEED = 42  # RULER's --random_seed default; evalkit's --seed S runs RULER's seed 42 + S

# RULER's model templates (scripts/data/template.py); "hf-chat" is evalkit's: the tokenizer's own chat template
MODEL_TEMPLATES = {
    "base": "{task_template}",
    "meta-chat": "[INST] {task_template} [/INST]",
    "vicuna-chat": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: {task_template} ASSISTANT:",
    "lwm-chat": "You are a helpful assistant. USER: {task_template} ASSISTANT: ",
    "command-r-chat": "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>{task_template}<|END_OF_TURN_TOKEN|>"
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "chatglm-chat": "[gMASK]sop<|user|> \n {task_template}<|assistant|> \n ",
    "RWKV": "User: hi\n\nAssistant: Hi. I am your assistant and I will provide expert full response in full details. "
    "Please feel free to ask any question and I will always answer it\n\nUser: {task_template}\n\nAssistant:",
    "Phi3": "<|user|>\n{task_template}<|end|>\n<|assistant|>\n",
    "meta-llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{task_template}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "jamba": "<|startoftext|><|bom|><|system|> <|eom|><|bom|><|user|> {task_template}<|eom|><|bom|><|assistant|>",
    "nemotron5-instruct": "<SPECIAL_10>System\n\n<SPECIAL_11>User\n{task_template}\n<SPECIAL_11>Assistant\n",
}
TEMPLATE_CHOICES = (*MODEL_TEMPLATES, "hf-chat")


@dataclass(frozen=True)
class TaskText:
    template: str
    answer_prefix: str
    tokens_to_generate: int


# RULER's task templates (scripts/data/synthetic/constants.py)
TASK_TEXT = {
    "niah": TaskText(
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
        "quiz you "
        "about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} "
        "mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
    ),
    "variable_tracking": TaskText(
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: "
        "Find "
        "all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
        "the "
        "value {query}, they are: ",
        30,
    ),
    "common_words_extraction": TaskText(
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
        "appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
    ),
    "freq_words_extraction": TaskText(
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What "
        "are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
    ),
    "qa": TaskText(
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\n"
        "The following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only "
        "give me "
        "the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
    ),
}

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NORMALIZATION = r"re.sub(r'\s+', ' ', text).split(' '): whitespace collapsed to single spaces, words from the start"


def model_template(name: str, tokenizer) -> str:
    """The model template with ``{task_template}`` in the user message's place."""
    if name in MODEL_TEMPLATES:
        return MODEL_TEMPLATES[name]
    if name != "hf-chat":
        from evalkit.core.errors import did_you_mean

        raise ConfigError(
            f"unknown RULER template {name!r}",
            f"{did_you_mean(name, TEMPLATE_CHOICES)}choose from {', '.join(TEMPLATE_CHOICES)}",
        )
    from evalkit.data.haystack import _chat_parts

    parts = _chat_parts(tokenizer, "on")
    # the chat text is literal: braces in it must survive str.format
    return (
        parts[0].replace("{", "{{").replace("}", "}}")
        + "{task_template}"
        + parts[1].replace("{", "{{").replace("}", "}}")
    )


def full_template(task: str, template: str, tokenizer) -> str:
    """RULER's prepare.py: model template around the task template, then the answer prefix."""
    text = TASK_TEXT[task]
    return model_template(template, tokenizer).replace("{task_template}", text.template) + text.answer_prefix


# ---------------------------------------------------------------- word keys (wonderwords adjective-noun pairs)


def _wonderwords(name: str) -> list[str]:
    try:
        from wonderwords import random_word
    except ImportError as e:
        raise DataError("RULER's word keys come from the wonderwords package", "pip install wonderwords") from e
    return random_word._get_words_from_text_file(name)


class WordPairs:
    """``sorted(set(f"{adj}-{noun}"))`` over wonderwords' adjectives x nouns (6,171,620 keys), indexed without
    building it.

    RULER draws ``random.choice(words)`` from that sorted list (28 s and 800 MB to build in Python). Strings of
    adjectives that share the prefix ``root-`` interleave (and collide: ``a-b`` + ``c`` = ``a`` + ``b-c``); those
    families are built and sorted in full, every other adjective's keys are ``adj-`` + the sorted nouns."""

    def __init__(self, adjectives: list[str], nouns: list[str]):
        self.nouns = sorted(set(nouns))
        adjs = sorted(set(adjectives), key=lambda a: a + "-")
        families: dict[str, list[str]] = {}
        for a in sorted(adjs, key=len):  # shortest first: a root is seen before the adjectives it prefixes
            root = next((r for r in families if a.startswith(r + "-")), None)
            families.setdefault(root or a, []).append(a)
        self.blocks: list[tuple[str, list[str] | None]] = []  # (root, explicit sorted keys or None: root + "-" + nouns)
        starts, total = [], 0
        for root in sorted(families, key=lambda r: r + "-"):
            members = families[root]
            keys = None if len(members) == 1 else sorted({f"{a}-{n}" for a in members for n in self.nouns})
            self.blocks.append((root, keys))
            starts.append(total)
            total += len(self.nouns) if keys is None else len(keys)
        self.starts, self.total = starts, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> str:
        b = bisect.bisect_right(self.starts, k) - 1
        root, keys = self.blocks[b]
        at = k - self.starts[b]
        return keys[at] if keys is not None else f"{root}-{self.nouns[at]}"


@lru_cache(maxsize=1)
def word_pairs() -> WordPairs:
    return WordPairs(_wonderwords("adjectivelist.txt"), _wonderwords("nounlist.txt"))


@lru_cache(maxsize=1)
def cwe_words() -> tuple[str, ...]:
    """RULER's cwe vocabulary: sorted(set(nouns + adjectives + verbs)) (8,166 words), before its seeded shuffle."""
    return tuple(
        sorted(set(_wonderwords("nounlist.txt") + _wonderwords("adjectivelist.txt") + _wonderwords("verblist.txt")))
    )


# ---------------------------------------------------------------- essay haystack


@dataclass(frozen=True)
class Essay:
    words: tuple[str, ...]  # RULER's haystack: the normalized text split on single spaces
    source: str  # where the text came from
    splitter: str  # which sentence splitter marks the needle positions


def essay_from(dataset: str | None, text_field: str = "text", split: str = "train") -> Essay:
    """RULER's essay haystack from ``--dataset``: RULER's own PaulGrahamEssays.json ({"text": ...}), any evalkit
    corpus (documents joined by blank lines), or, by default, the built-in text (Python's documentation topics)
    standing in for Paul Graham's essays offline."""
    if dataset and dataset.endswith(".json") and Path(dataset).expanduser().is_file():
        try:
            data = json.loads(Path(dataset).expanduser().read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(
                f"cannot read {dataset}: {e}", 'give RULER\'s PaulGrahamEssays.json ({"text": ...})'
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise DataError(
                f"{dataset} is not RULER's essay file",
                'give a JSON object with a "text" string (what RULER\'s download_paulgraham_essay.py writes)',
            )
        text, source = data["text"], f"{dataset} (RULER's PaulGrahamEssays.json format)"
    else:
        from evalkit.data.corpus import load_corpus

        corpus = load_corpus(dataset, text_field, split)
        text = "\n\n".join(corpus.documents)
        source = corpus.name + (
            "" if dataset else " (built-in stand-in for Paul Graham's essays, which need the network)"
        )
    words = tuple(re.sub(r"\s+", " ", text).split(" "))
    if len(words) < 2:
        raise DataError(f"the essay haystack from {source} has no words", "give a text with words")
    return Essay(words, source, splitter()[1])


@lru_cache(maxsize=1)
def splitter():
    """(split function, label): NLTK's punkt as RULER calls it (``sent_tokenize``) when its punkt_tab data is
    installed, else NLTK's untrained punkt (offline: the data needs a download; boundaries can differ at
    abbreviations, and only there)."""
    try:
        import nltk
        from nltk.tokenize.punkt import PunktSentenceTokenizer
    except ImportError as e:
        raise DataError("RULER's essay tasks split sentences with NLTK", "pip install nltk") from e
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        from nltk.tokenize import sent_tokenize

        return sent_tokenize, "nltk sent_tokenize (punkt_tab english), as RULER"
    except LookupError:
        return PunktSentenceTokenizer().tokenize, (
            "nltk punkt, untrained (punkt_tab data not installed; RULER uses "
            "punkt_tab english: boundaries can differ at abbreviations)"
        )


# ---------------------------------------------------------------- the shared machinery


@dataclass
class Source:
    """What the ``nvidia`` generators read; ``seed`` is RULER's ``--random_seed``."""

    tokenizer: Any
    template: str = "base"
    seed: int = RULER_SEED
    essay: Essay | None = None
    qa_files: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, repr=False)

    def count(self, text: str) -> int:
        """RULER's length: ``len(tokenizer.tokenize(text))``, no special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Built:
    """One prompt as RULER writes it: ``input`` + ``answer_prefix`` is what the model sees."""

    input: str
    answer_prefix: str
    answers: tuple[str, ...]
    length: int  # RULER's "length": prompt tokens + the generation budget
    units: int  # haystack units used (words, lines, noises, distinct words, documents)
    info: dict


def search(make, count, probe: int, lowest: int, max_len: int, budget: int, estimate) -> int:
    """RULER's haystack-size search: one draw at ``probe`` units for tokens per unit, an upper bound from
    ``estimate(tokens per unit)``, then bisection from ``lowest`` for the largest size whose prompt + budget
    fits (``lowest`` when none does); every draw takes from the stream, as RULER's does."""
    per_unit = count(make(probe)) / probe
    low, high, best = lowest, max(estimate(per_unit), lowest * 2), None
    while low <= high:
        mid = (low + high) // 2
        if count(make(mid)) + budget <= max_len:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best if best is not None else lowest


def fit(make, count, units: int, incremental: int, max_len: int, budget: int, tries: int = 200):
    """RULER's per-sample loop: draw at ``units``; while too long, draw again with ``incremental`` fewer (never
    below it)."""
    for _ in range(tries):
        text, *rest = make(units)
        length = count(text) + budget
        if length <= max_len:
            return text, rest, length, units
        if units > incremental:
            units -= incremental
    raise ConfigError(
        f"no RULER prompt fits in {max_len} tokens (the task's fixed text alone is too long)", "use longer --lengths"
    )


def split_prefix(text: str, task: str) -> tuple[str, str]:
    """RULER cuts the answer prefix off at the last occurrence of its first 10 characters."""
    at = text.rfind(TASK_TEXT[task].answer_prefix[:10])
    return text[:at], text[at:]


# ---------------------------------------------------------------- niah


@dataclass(frozen=True)
class NiahSpec:
    haystack: str  # RULER's type_haystack: "noise" | "essay" | "needle"
    key: str  # type_needle_k
    value: str  # type_needle_v
    k: int = 1
    v: int = 1
    q: int = 1


NIAH = {
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", k=4),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", v=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", q=4),
}
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [round(i * 100 / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)); no .5 ties among them


def _random_item(rnd: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rnd.randint(10**6, 10**7 - 1))
    if kind == "words":
        words = word_pairs()
        return words[rnd._randbelow(len(words))]  # = random.choice on the sorted list
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def _essay_text(words: tuple[str, ...], n: int) -> str:
    if n <= len(words):
        return " ".join(words[:n])
    return " ".join((words * (-(-n // len(words))))[:n])  # RULER repeats the text when it is too short


def niah(source: Source, name: str, length: int, samples: int) -> list[Built]:
    spec = NIAH[name]
    k = max(spec.k, spec.q)
    rnd = random.Random(source.seed)
    template = full_template("niah", source.template, source.tokenizer)
    value_kind = spec.value
    if spec.q * spec.v == 1:  # RULER's singular wording, replaced over the whole template as it does
        for a, b in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template = template.replace(a, b)
        value_kind = value_kind[:-1]
    if spec.haystack == "essay" and source.essay is None:
        raise DataError("RULER's essay haystack is not loaded", "internal: build the source with an essay")
    split = splitter()[0]

    def make(n: int):
        keys, values, needles = [], [], []
        for _ in range(k):
            keys.append(_random_item(rnd, spec.key))
            values.append([])
            for _ in range(spec.v):
                values[-1].append(_random_item(rnd, spec.value))
                needles.append(NEEDLE.format(type_needle_v=spec.value, key=keys[-1], value=values[-1][-1]))
        random.Random(source.seed).shuffle(needles)
        if spec.haystack == "essay":
            sents = split(_essay_text(source.essay.words, n).strip())
            cuts = [0] + sorted(int(len(sents) * (d / 100)) for d in rnd.sample(DEPTHS, len(needles))) + [len(sents)]
            parts = []
            for i in range(1, len(cuts)):
                parts.append(" ".join(sents[cuts[i - 1] : cuts[i]]))
                if i - 1 < len(needles):
                    parts.append(needles[i - 1])
            context = " ".join(parts)
        else:
            if spec.haystack == "noise":
                lines = [NOISE] * n
            else:
                lines = []
                for _ in range(n):  # key drawn before value, as str.format evaluates its arguments
                    key = _random_item(rnd, spec.key)
                    lines.append(NEEDLE.format(type_needle_v=spec.value, key=key, value=_random_item(rnd, spec.value)))
            for at, needle in zip(sorted(rnd.sample(range(n), len(needles)), reverse=True), needles):
                lines.insert(at, needle)
            context = "\n".join(lines)
        asked = rnd.sample(range(k), spec.q)
        queries = [keys[i] for i in asked]
        answers = [a for i in asked for a in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        text = template.format(type_needle_v=value_kind, context=context, query=query)
        return text, answers, {"keys": keys, "values": values, "queries": queries, "needles": needles}

    incremental = 500 if spec.haystack == "essay" else 25
    if spec.haystack != "essay" and length < 4096:
        incremental = 5
    budget = TASK_TEXT["niah"].tokens_to_generate
    size = search(
        lambda n: make(n)[0], source.count, incremental, incremental, length, budget, lambda per: int(length / per * 3)
    )
    out = []
    for _ in range(samples):
        text, (answers, info), total, used = fit(make, source.count, size, incremental, length, budget)
        out.append(Built(*split_prefix(text, "niah"), tuple(answers), total, used, {**info, "searched_units": size}))
    return out


def prompt_ids(tokenizer, built: Built) -> list[int]:
    """What the model sees: ``input + answer_prefix`` through ``tokenizer(text)`` (RULER's HF wrapper; BOS when the
    tokenizer adds one)."""
    return list(tokenizer(built.input + built.answer_prefix)["input_ids"])


def answer_ids(tokenizer, prompt: list[int], text: str, answer: str) -> tuple[int, ...] | None:
    """The single answer's tokens as they follow the prompt (its leading space included), None when they do not
    split cleanly."""
    full = list(tokenizer(text + " " + answer)["input_ids"])
    return tuple(full[len(prompt) :]) if full[: len(prompt)] == prompt and len(full) > len(prompt) else None
