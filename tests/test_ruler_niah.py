"""RULER's NIAH generators against hand-checked properties, and RULER's string-match scores by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

from evalkit.core.errors import ConfigError
from evalkit.core.scoring import postprocess, string_match_all, string_match_part
from evalkit.data.haystack import NOISE
from evalkit.data.ruler import TASKS, RulerSource, generator
from evalkit.data.ruler.niah import SPECS

NIAH = [name for name in TASKS if name.startswith("niah")]
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")


@pytest.fixture(scope="module")
def source(tokenizer):
    return RulerSource(tokenizer, chat="off", seed=7)


@pytest.mark.parametrize("name", NIAH)
@pytest.mark.parametrize("length", [560, 777])
def test_prompt_is_exact_and_every_answer_is_there_once(name, length, source, tokenizer):
    s = generator(name)(source, length, 3)
    spec, p = SPECS[name], s.provenance
    assert len(s.prompt_ids) == length and s.context_length == length
    text = tokenizer.decode(s.prompt_ids)
    # RULER's counts: keys = max(k, q) needles of v values each; q keys asked, q * v answers
    assert len(p["needles"]) == max(spec.keys, spec.queries) * spec.values == len(p["needle_spans"])
    assert len(s.answers) == spec.queries * spec.values and len(p["queries"]) == spec.queries
    assert len(set(p["keys"])) == len(p["keys"])
    for answer in s.answers:
        assert text.count(answer) == 1, answer
    for key in p["queries"]:  # the asked key: in its needles only (v of them), besides the question and answer prefix
        assert text.count(f"for {key} is:") == spec.values
    for (start, end), needle in zip(p["needle_spans"], p["needles"]):
        assert tokenizer.decode(s.prompt_ids[start:end]).strip() == needle
    # the answer key-value pairs really are the needles'
    said = {m.group(2): [] for m in NEEDLE.finditer(" ".join(p["needles"]))}
    for m in NEEDLE.finditer(" ".join(p["needles"])):
        said[m.group(2)].append(m.group(3))
    assert sorted(s.answers) == sorted(v for k in p["queries"] for v in said[k])
    assert all(m.group(1) == spec.value for m in NEEDLE.finditer(" ".join(p["needles"])))
    if len(s.answers) == 1:
        assert tokenizer.decode(s.answer_ids).strip() == s.answers[0]
        assert text.endswith(f"{p['answer_prefix']}") or text.rstrip().endswith(p["answer_prefix"])
    else:
        assert s.answer_ids is None


def test_wording_follows_ruler(source, tokenizer):
    one = tokenizer.decode(generator("niah_single_2")(source, 600, 0).prompt_ids)
    assert one.startswith(
        "A special magic number is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the number afterwards.\n"
    )
    assert re.search(
        r"\nWhat is the special magic number for \w+-\w+ mentioned in the provided text\?\n"
        r"The special magic number for \w+-\w+ mentioned in the provided text is\s*$",
        one,
    )
    many = generator("niah_multiquery")(source, 700, 0)
    text = tokenizer.decode(many.prompt_ids)
    a, b, c, d = many.provenance["queries"]
    assert text.startswith("Some special magic numbers are hidden within the following text.")
    assert f"What are all the special magic numbers for {a}, {b}, {c}, and {d} mentioned in the provided text?" in text
    uuid = generator("niah_multikey_3")(source, 700, 0)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid.answers[0])
    assert re.fullmatch(r"[0-9a-f-]{36}", uuid.provenance["queries"][0])
    assert re.fullmatch(r"\d{7}", generator("niah_single_1")(source, 600, 0).answers[0])


def test_repeat_haystack_is_noise_lines_and_the_needle(source, tokenizer):
    s = generator("niah_single_1")(source, 600, 1)
    text = tokenizer.decode(s.prompt_ids)
    body = text.split("afterwards.\n", 1)[1].split("What is the special", 1)[0]
    lines = body.split("\n")[:-1]
    assert NOISE.endswith(lines[0]) and lines[0] != NOISE  # the filler: the noise line's tail
    assert [line for line in lines[1:] if line != NOISE] == [s.provenance["needles"][0]]
    assert s.provenance["haystack_lines"] == len(lines) - 2


def test_needle_haystack_lines_are_needles_with_distinct_keys(source, tokenizer):
    s = generator("niah_multikey_2")(source, 900, 2)
    text = tokenizer.decode(s.prompt_ids)
    body = text.split("afterwards.\n", 1)[1].split("What is the special", 1)[0]
    lines = body.split("\n")[1 if s.provenance["filler_tokens"] else 0 : -1]  # after the filler, if any
    found = [NEEDLE.fullmatch(line) for line in lines]
    assert all(found) and len(lines) == s.provenance["haystack_lines"] + 1
    keys = [m.group(2) for m in found]
    assert len(set(keys)) == len(keys)
    assert dict((m.group(2), m.group(3)) for m in found)[s.provenance["queries"][0]] == s.answers[0]


def test_essay_is_the_corpus_from_its_offset_with_needles_at_sentence_ends(source, tokenizer):
    from evalkit.data.corpus import load_corpus, separator_id, token_stream

    for name in ("niah_single_2", "niah_multikey_1"):
        s = generator(name)(source, 800, 4)
        p, prompt = s.provenance, np.asarray(s.prompt_ids)
        keep = np.ones(len(prompt), bool)
        for start, end in p["needle_spans"]:
            keep[start:end] = False
            before = tokenizer.decode(prompt[start - 1 : start])
            assert before.rstrip().endswith((".", "!", "?")) or before.endswith("\n"), before
        stream = token_stream(load_corpus(), tokenizer)
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
        tokens = np.where(stream.tokens == separator_id(tokenizer), newline, stream.tokens)
        hay = np.take(tokens, np.arange(p["haystack_offset"], p["haystack_offset"] + p["haystack_tokens"]), mode="wrap")
        start = p["context_start"]
        assert p["context_tokens"] == p["haystack_tokens"] + sum(b - a for a, b in p["needle_spans"])
        # the context, needles taken out, is exactly the corpus tokens from the offset
        np.testing.assert_array_equal(prompt[keep][start : start + len(hay)], hay)


def test_samples_are_reproducible_and_distinct(source, tokenizer):
    build = generator("niah_multivalue")
    assert build(source, 600, 0).prompt_ids == build(RulerSource(tokenizer, chat="off", seed=7), 600, 0).prompt_ids
    assert build(source, 600, 0).answers != build(source, 600, 1).answers


def test_too_short_a_length_is_a_config_error(source):
    with pytest.raises(ConfigError, match="too short for RULER's niah_multiquery"):
        generator("niah_multiquery")(source, 100, 0)


def test_string_match_by_hand():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert string_match_all("  ABC-def\n", ["abc-DEF"]) == 1.0  # case-insensitive
    assert string_match_all("nothing", ["1"]) == 0.0
    assert string_match_part("Paris, France", ["London", "paris"]) == 1.0
    assert string_match_part("Paris, France", ["London", "Rome"]) == 0.0
    assert postprocess("\t 12\x0034 \n") == "12\n34"  # RULER: control characters become newlines, then strip
    assert string_match_all("12\x0034", ["1234"]) == 0.0
