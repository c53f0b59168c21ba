"""``--fill nvidia`` against prompts NVIDIA's own RULER generator wrote (tests/data/ruler_golden/).

The golden prompts come from running NVIDIA/RULER's ``scripts/data/prepare.py`` (commit c3f5e3b) outside the
project: seed 42, ``--tokenizer_type hf`` on SmolLM2-135M's tokenizer, ``--max_seq_length`` 1024 and 2048,
templates ``base`` (all 13 tasks) and ``meta-llama3`` (niah_single_1, vt), the essay haystack from
``PaulGrahamEssays.json`` here (RULER's file format; its text is the first six of Python's documentation
topics, evalkit's built-in corpus) and RULER-format ``squad.json`` / ``hotpotqa.json`` written for the test.
Only their output is stored. Every task reaches the first level: the same ``input``, ``answer_prefix``,
``outputs`` and ``length`` strings and numbers, so the same tokens.

SmolLM2-135M-Instruct's tokenizer (Apache-2.0) is shipped in tests/data/smollm2_tokenizer/, so these tests run
offline on any machine (no model cache, no ``~/nltk_data``). The essay tasks split sentences with NLTK's punkt:
with punkt_tab installed RULER's trained splitter runs, without it the untrained one, which splits this text
exactly as the trained one (checked when the fixture was made); ``test_essay_prompts_with_untrained_punkt``
holds the untrained path on machines that have the data.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from evalkit.data.ruler import nvidia, nvidia_tasks

DATA = Path(__file__).parent / "data" / "ruler_golden"
TOKENIZER = Path(__file__).parent / "data" / "smollm2_tokenizer"  # the conftest fixture smollm2_tokenizer reads it


def _golden() -> list[dict]:
    with gzip.open(DATA / "golden.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


GOLDEN = _golden()
CELLS = sorted({(r["template"], r["max_seq_length"], r["task"]) for r in GOLDEN})


@pytest.fixture(scope="module")
def essay():
    return nvidia.essay_from(str(DATA / "PaulGrahamEssays.json"))


@pytest.mark.parametrize("template,length,task", CELLS)
def test_prompts_match_rulers_generator(smollm2_tokenizer, essay, template, length, task):
    gold = [r for r in GOLDEN if (r["template"], r["max_seq_length"], r["task"]) == (template, length, task)]
    qa_files = (str(DATA / "squad.json"), str(DATA / "hotpotqa.json"))
    source = nvidia.Source(smollm2_tokenizer, template, 42, essay, qa_files)
    built = nvidia_tasks.build_many(source, task, length, len(gold))
    for g, b in zip(gold, built):
        assert b.input == g["input"]
        assert b.answer_prefix == g["answer_prefix"]
        assert list(b.answers) == g["outputs"]
        assert b.length == g["length"] <= length  # prompt + the generation budget within the length
        ids = nvidia.prompt_ids(smollm2_tokenizer, b)
        assert ids == smollm2_tokenizer(g["input"] + g["answer_prefix"])["input_ids"]


ESSAY_TASKS = ("niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery")


@pytest.mark.parametrize("task", ESSAY_TASKS)
def test_essay_prompts_with_untrained_punkt(monkeypatch, smollm2_tokenizer, task):
    """What a machine without NLTK's punkt_tab data builds (the default offline): the same golden prompts."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    monkeypatch.setattr(nvidia, "splitter", lambda: (PunktSentenceTokenizer().tokenize, "nltk punkt, untrained"))
    essay = nvidia.essay_from(str(DATA / "PaulGrahamEssays.json"))
    assert essay.splitter == "nltk punkt, untrained"
    gold = [r for r in GOLDEN if (r["template"], r["max_seq_length"], r["task"]) == ("base", 1024, task)]
    built = nvidia_tasks.build_many(nvidia.Source(smollm2_tokenizer, "base", 42, essay), task, 1024, len(gold))
    assert [(b.input, b.answer_prefix, list(b.answers), b.length) for b in built] == [
        (g["input"], g["answer_prefix"], g["outputs"], g["length"]) for g in gold
    ]


def test_shipped_tokenizer_is_the_cached_one(smollm2_tokenizer):
    """The shipped tokenizer.json is byte for byte the one ``evalkit models fetch smollm2-135m`` caches."""
    import hashlib

    with gzip.open(TOKENIZER / "tokenizer.json.gz", "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4"
    assert len(smollm2_tokenizer) == 49152 and smollm2_tokenizer.eos_token == "<|im_end|>"
    # ids read off the cached tokenizer; a trailing space splits off as its own token, 216
    ids = smollm2_tokenizer("The special magic number is ", add_special_tokens=False)["input_ids"]
    assert ids == [504, 1767, 9019, 1230, 314, 216]


def test_golden_covers_every_task():
    from evalkit.data.ruler import TASKS

    assert {t for _, _, t in CELLS} == set(TASKS)


def test_word_pairs_index_as_the_sorted_set():
    """The lazy index of sorted(set(adj-noun)) against building it, on words with hyphen collisions."""
    adjs = ["a", "a-b", "ab", "a b", "zz", "b-c", "b", "a-b-c"]
    nouns = ["c", "b-c", "x", "c-d", "b", "a"]
    pairs = nvidia.WordPairs(adjs, nouns)
    expected = sorted({f"{a}-{n}" for a in adjs for n in nouns})
    assert len(pairs) == len(expected) and [pairs[k] for k in range(len(pairs))] == expected


def test_wonderwords_pairs_count_and_ends():
    pairs = nvidia.word_pairs()
    assert len(pairs) == 6_171_620  # RULER's sorted(set(...)) over wonderwords 3's 912 adjectives x 6,782 nouns
    assert pairs[0] < pairs[1] < pairs[len(pairs) // 2] < pairs[len(pairs) - 1]


def test_depths_are_rulers():
    import numpy as np

    assert nvidia.DEPTHS == list(np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int))


def test_essay_normalization(tmp_path):
    path = tmp_path / "PaulGrahamEssays.json"
    path.write_text(json.dumps({"text": "One  two\n\nthree\tfour.\n| a | b |"}))
    essay = nvidia.essay_from(str(path))
    assert essay.words == ("One", "two", "three", "four.", "|", "a", "|", "b", "|")
    assert "PaulGrahamEssays.json" in essay.source
    path.write_text(json.dumps(["not", "an", "essay"]))
    with pytest.raises(Exception, match="not RULER's essay file"):
        nvidia.essay_from(str(path))
