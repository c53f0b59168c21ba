"""RULER's vt, cwe, fwe, qa_1 and qa_2 as NVIDIA's generator builds them (protocol ``nvidia``; the NIAH tasks,
templates and the haystack search are in ``nvidia.py``), and ``build_many``, the entry point for all 13 tasks.

vt draws from Python's ``random`` and numpy's legacy stream (``np.random.seed``; the chain's value and the
worked example's value come from ``numpy.random.randint``), so both are followed; the worked example is
built first at 500 tokens, then re-drawn per sample. cwe's vocabulary is wonderwords' 8,166 nouns,
adjectives and verbs shuffled with the seed; RULER falls back to an 8.5 MB English list
(``english_words.json``) when a search probe asks for more words than that, which only happens at long
lengths: evalkit stops there with an error rather than inventing a list. fwe's vocabulary is
``(length - 50) // 50`` coded words. qa reads the same SQuAD v2 / HotpotQA JSON files RULER downloads.
"""

from __future__ import annotations

import random
import string

import numpy as np

from evalkit.core.errors import ConfigError, DataError
from evalkit.data.ruler.nvidia import (
    NIAH,
    NOISE,
    TASK_TEXT,
    Built,
    Source,
    cwe_words,
    fit,
    full_template,
    niah,
    search,
    split_prefix,
)

NUM_CHAINS, NUM_HOPS = 1, 4  # synthetic.yaml
NUM_CW, FREQ_CW, FREQ_UCW = 10, 30, 3
ALPHA, CODED_LEN = 2.0, 6


# ---------------------------------------------------------------- vt


def _chains(rnd: random.Random, nrs: np.random.RandomState, icl: bool):
    letters = 3 if icl else 5
    hops = min(10, NUM_HOPS) if icl else NUM_HOPS
    names = ["".join(rnd.choices(string.ascii_uppercase, k=letters)) for _ in range((hops + 1) * NUM_CHAINS)]
    while len(set(names)) < NUM_CHAINS * (hops + 1):
        names.append("".join(rnd.choices(string.ascii_uppercase, k=letters)))
    chains, lines = [], []
    for i in range(0, len(names), hops + 1):  # RULER slices every name drawn, duplicates' extras included
        part = names[i : i + hops + 1]
        chains.append(part)
        first = f"VAR {part[0]} = 12345" if icl else f"VAR {part[0]} = {nrs.randint(10000, 99999)}"
        lines.append([first] + [f"VAR {part[j + 1]} = VAR {part[j]} " for j in range(len(part) - 1)])
    return chains, lines


def _vt_make(rnd, nrs, template: str, icl: bool):
    def make(n: int):
        chains, lines = _chains(rnd, nrs, icl)
        value = lines[0][0].split("=")[-1].strip()
        sentences = [NOISE] * n
        for chain in lines:
            where = sorted(rnd.sample(range(len(sentences)), len(chain)))
            for at, j in zip(where, range(len(chain))):
                sentences.insert(at + j, chain[j])
        context = "\n".join(sentences).replace(". \n", ".\n")
        hops = min(10, NUM_HOPS) if icl else NUM_HOPS
        return template.format(context=context, query=value, num_v=hops + 1), chains[0]

    return make


def _randomize_example(rnd, nrs, example: str) -> str:
    for item in example.strip().split()[-NUM_HOPS - 1 :]:
        example = example.replace(item, "".join(rnd.choices(string.ascii_uppercase, k=len(item))))
    return example.replace("12345", str(nrs.randint(10000, 99999)))


def vt(source: Source, name: str, length: int, samples: int) -> list[Built]:
    rnd, nrs = random.Random(source.seed), np.random.RandomState(source.seed)
    task = TASK_TEXT["variable_tracking"]
    template = full_template("variable_tracking", source.template, source.tokenizer)
    count = source.count
    # the worked example: RULER's first pass, at 500 tokens with no generation budget and the bare task template
    bare = task.template + task.answer_prefix
    make_icl = _vt_make(rnd, nrs, bare, icl=True)
    size = search(lambda n: make_icl(n)[0], count, 5, 5, 500, 0, lambda per: int(500 / per * 3))
    text, (names,), _, _ = fit(make_icl, count, size, 5, 500, 0)
    example = text + " " + " ".join(names) + "\n"
    example_tokens = count(example)

    incremental = 5 if length < 4096 else 10
    make = _vt_make(rnd, nrs, template, icl=False)
    size = search(
        lambda n: make(n)[0],
        count,
        incremental,
        incremental,
        length,
        example_tokens + task.tokens_to_generate,
        lambda per: int(length / per * 3),
    )

    def with_example(n: int):
        text, chain = make(n)
        cut = text.index(task.template[:20])  # the example goes between the model template and the task
        return text[:cut] + _randomize_example(rnd, nrs, example) + "\n" + text[cut:], chain

    out = []
    for _ in range(samples):
        text, (chain,), total, used = fit(with_example, count, size, incremental, length, task.tokens_to_generate)
        out.append(
            Built(
                *split_prefix(text, "variable_tracking"),
                tuple(chain),
                total,
                used,
                {"variables": chain, "searched_units": size, "example_noise_lines": None},
            )
        )
    return out


# ---------------------------------------------------------------- cwe


def cwe(source: Source, name: str, length: int, samples: int) -> list[Built]:
    rnd = random.Random(source.seed)
    words = list(cwe_words())
    random.Random(source.seed).shuffle(words)
    template = full_template("common_words_extraction", source.template, source.tokenizer)

    def example(n: int, common: int, uncommon: int):
        if n > len(words):
            raise DataError(
                f"cwe at {length} tokens needs more than the {len(words)} wonderwords words: RULER then "
                "samples its english_words.json list, which evalkit does not ship",
                "use shorter --lengths for cwe",
            )
        picked = rnd.sample(words, n)
        items = picked[:NUM_CW] * common + picked[NUM_CW:] * uncommon
        random.Random(source.seed).shuffle(items)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), picked[:NUM_CW]

    def make(n: int):
        if length < 4096:
            shot, (context, answer) = example(20, 3, 1), example(n, 6, 1)
        else:
            shot, (context, answer) = example(40, 10, 3), example(n, FREQ_CW, FREQ_UCW)
        shot_text = (
            template.format(num_cw=NUM_CW, context=shot[0], query="")
            + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot[1]))
        )
        return shot_text + "\n" + template.format(num_cw=NUM_CW, context=context, query=""), answer

    budget = TASK_TEXT["common_words_extraction"].tokens_to_generate
    size = search(lambda n: make(n)[0], source.count, 4096, 10, length, budget, lambda per: int(length // per) * 2)
    out = []
    for _ in range(samples):
        text, (answer,), total, used = fit(make, source.count, size, 10, length, budget)
        out.append(
            Built(*split_prefix(text, "common_words_extraction"), tuple(answer), total, used, {"searched_units": size})
        )
    return out


# ---------------------------------------------------------------- fwe


def zipf_counts(num_words: int, vocab: int) -> np.ndarray:
    from scipy.special import zeta

    k = np.arange(1, vocab + 1)
    return (num_words * (k**-ALPHA) / zeta(ALPHA)).astype(int)


def fwe(source: Source, name: str, length: int, samples: int) -> list[Built]:
    rnd = random.Random(source.seed)
    task = TASK_TEXT["freq_words_extraction"]
    template = full_template("freq_words_extraction", source.template, source.tokenizer)
    max_len = length - task.tokens_to_generate
    size = max_len // 50  # RULER's vocab_size
    if size < 5:
        raise ConfigError(
            f"context length {length} is too short for fwe (a vocabulary of {size} coded words)",
            "use 300 tokens or more",
        )
    step = max_len // 32

    def vocab():
        words = ["".join(rnd.choices(string.ascii_lowercase, k=CODED_LEN)) for _ in range(size)]
        while len(set(words)) < size:
            words.append("".join(rnd.choices(string.ascii_lowercase, k=CODED_LEN)))
        words = sorted(set(words))
        random.Random(source.seed).shuffle(words)
        words[0] = "..."  # the top rank is noise
        return words

    def text_of(words, n: int) -> str:
        listed = [w for w, c in zip(words, zipf_counts(n, len(words))) for _ in range(c)]
        random.Random(source.seed).shuffle(listed)
        return template.format(context=" ".join(listed), query="")

    def draw(num_words: int):
        words = vocab()
        if num_words > 0:
            text = text_of(words, num_words)
            while source.count(text) > max_len:
                num_words -= step
                text = text_of(words, num_words)
        else:
            num_words = max_len // CODED_LEN
            while source.count(text_of(words, num_words)) < max_len:
                num_words += step
            num_words -= step
        return text_of(words, num_words), words, num_words

    _, _, first = draw(-1)
    out = []
    for _ in range(samples):
        text, words, used = draw(first)
        total = source.count(text) + task.tokens_to_generate
        out.append(
            Built(
                *split_prefix(text, "freq_words_extraction"),
                tuple(words[1:4]),
                total,
                used,
                {"vocab_size": size, "searched_units": first},
            )
        )
    return out


# ---------------------------------------------------------------- qa


def _read_qa(path: str, kind: str):
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if kind == "squad":
            docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
            where = {c: i for i, c in enumerate(docs)}
            qas = []
            for d in data["data"]:
                more = [where[p["context"]] for p in d["paragraphs"]]
                for p in d["paragraphs"]:
                    for q in p["qas"]:
                        if not q.get("is_impossible", False):
                            qas.append(
                                (
                                    q["question"],
                                    [a["text"] for a in q["answers"]],
                                    [where[p["context"]]],
                                    [i for i in more if i != where[p["context"]]],
                                )
                            )
        else:
            docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
            where = {c: i for i, c in enumerate(docs)}
            qas = [
                (d["question"], [d["answer"]], [where[f"{t}\n{''.join(p)}"] for t, p in d["context"]], []) for d in data
            ]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"cannot read {path} as RULER's {kind} file ({type(e).__name__}: {e})",
            "give the SQuAD v2 / HotpotQA JSON RULER's download_qa_dataset.sh fetches",
        ) from None
    return qas, docs


def qa(source: Source, name: str, length: int, samples: int) -> list[Built]:
    from evalkit.data.ruler import SkipTask
    from evalkit.data.ruler.qa import load

    kind = "squad" if name == "qa_1" else "hotpotqa"
    path = next((p for p in source.qa_files if load(p).format == kind), None)
    if path is None:
        raise SkipTask(
            f"{name} needs a local {'SQuAD v2' if kind == 'squad' else 'HotpotQA'} JSON file: "
            "pass --qa-dataset FILE.json"
        )
    qas, docs = source._cache.get(path) or source._cache.setdefault(path, _read_qa(path, kind))
    if samples > len(qas):
        raise ConfigError(
            f"{path} has {len(qas)} answerable questions, fewer than --samples {samples}",
            f"use --samples {len(qas)} or fewer (RULER asks question i for sample i)",
        )
    rnd = random.Random(source.seed)
    template = full_template("qa", source.template, source.tokenizer)

    def make_for(index: int):
        query, answers, gold, more = qas[index]

        def make(n: int):
            if n < len(docs):
                if n - len(gold) > len(more):
                    extra = [i for i in range(len(docs)) if i not in gold + more]
                    chosen = gold + more + rnd.sample(extra, max(0, n - len(gold) - len(more)))
                else:
                    chosen = gold + rnd.sample(more, n - len(gold))
                texts = [docs[i] for i in chosen]
            else:
                texts = (docs * (-(-n // len(docs))))[:n]
            random.Random(source.seed).shuffle(texts)
            context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(texts))
            return template.format(context=context, query=query), answers

        return make

    budget = TASK_TEXT["qa"].tokens_to_generate
    size = search(lambda n: make_for(0)(n)[0], source.count, 10, 10, length, budget, lambda per: int(length / per * 3))
    out = []
    for index in range(samples):
        text, (answers,), total, used = fit(make_for(index), source.count, size, 10, length, budget)
        out.append(
            Built(
                *split_prefix(text, "qa"),
                tuple(answers),
                total,
                used,
                {"question_index": index, "file": path, "searched_units": size},
            )
        )
    return out


# ---------------------------------------------------------------- entry point


def build_many(source: Source, name: str, length: int, samples: int) -> list[Built]:
    """The first ``samples`` prompts RULER's generator writes for ``name`` at ``length`` (they depend on each other)."""
    build = niah if name in NIAH else {"vt": vt, "cwe": cwe, "fwe": fwe, "qa_1": qa, "qa_2": qa}[name]
    try:
        return build(source, name, length, samples)
    except ConfigError as e:
        raise ConfigError(f"{name} at {length} tokens: {e.problem}", e.fix) from None
