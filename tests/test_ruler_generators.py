"""RULER's vt, cwe, fwe, qa_1 and qa_2 generators: each prompt is decoded back to text and its answer
recomputed from that text alone (the chain resolved, the words counted, the gold paragraph found)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from evalkit.core.errors import ConfigError, DataError
from evalkit.data.ruler import RulerSource, SkipTask, generator
from evalkit.data.ruler.words import word_list


def _text(tokenizer, sample) -> str:
    return tokenizer.decode(list(sample.prompt_ids))


# ---------------------------------------------------------------- vt


def _resolve(text: str) -> set[str]:
    """Every variable holding the queried value, found by following the assignments in the text."""
    value = re.findall(r"Question: Find all variables that are assigned the value (\d+)", text)[-1]
    holding = set(re.findall(rf"VAR ([A-Z]+) = {value}\b", text))
    copies = re.findall(r"VAR ([A-Z]+) = VAR ([A-Z]+)", text)
    while True:
        more = {dst for dst, src in copies if src in holding} - holding
        if not more:
            return holding
        holding |= more


@pytest.mark.parametrize("length", [700, 1100, 2500])
def test_vt_chain_resolves_to_the_answer_at_exact_length(tokenizer, length):
    sample = generator("vt")(RulerSource(tokenizer, seed=3), length, 0)
    text = _text(tokenizer, sample)
    assert sample.prompt_tokens == length
    assert _resolve(text) == set(sample.answers) and len(sample.answers) == 5
    main = text[text.rindex("Memorize and track") :]
    positions = [main.index(f"VAR {v} =") for v in sample.answers]
    assert positions == sorted(positions)  # each hop comes after the variable it copies, as RULER inserts them
    assert f"5 variables are assigned the value {sample.provenance['values'][0]}, they are: " in text
    assert sample.answer_ids is None


# ---------------------------------------------------------------- cwe / fwe


def _cwe_items(text: str) -> list[str]:
    start = text.rindex("Memorize the ones that appear most often.\n") + len(
        "Memorize the ones that appear most often.\n"
    )
    body = text[start : text.rindex("\nQuestion:")]
    numbered = re.findall(r"(\d+)\. ([a-z]+)", body)
    assert [int(n) for n, _ in numbered] == list(range(1, len(numbered) + 1))
    return [w for _, w in numbered]


@pytest.mark.parametrize("length, cw, ucw", [(1800, 6, 1), (3000, 6, 1), (8192, 30, 3)])
def test_cwe_top10_are_the_most_common_words(tokenizer, length, cw, ucw):
    sample = generator("cwe")(RulerSource(tokenizer, seed=1), length, 0)
    counts = Counter(_cwe_items(_text(tokenizer, sample)))
    top = [w for w, _ in counts.most_common(10)]
    assert set(top) == set(sample.answers) and len(sample.answers) == 10
    assert min(counts[w] for w in top) == cw > max(c for w, c in counts.items() if w not in top) == ucw
    assert len(counts) == sample.provenance["num_words"] > 10
    assert sample.prompt_tokens == length


def test_cwe_list_is_the_longest_that_fits(tokenizer):
    """One more word (ucw items) would not fit: the padding is smaller than that step."""
    source = RulerSource(tokenizer, seed=1)
    sample = generator("cwe")(source, 3000, 0)
    pad, items = sample.provenance["pad_tokens"], sample.provenance["items"]
    step = len(tokenizer(f" {items + 1}. abcdefgh", add_special_tokens=False)["input_ids"])  # a short word's item
    assert 0 <= pad < 3 * step
    assert len(word_list()) > 5000  # RULER's list, not a toy one


@pytest.mark.parametrize("length", [600, 2000, 6000])
def test_fwe_top3_are_the_most_frequent_coded_words(tokenizer, length):
    sample = generator("fwe")(RulerSource(tokenizer, seed=2), length, 0)
    text = _text(tokenizer, sample)
    body = text[
        text.index("most frequently appeared coded words.")
        + len("most frequently appeared coded words.") : text.rindex("\nQuestion:")
    ]
    counts = Counter(w for w in body.split() if w != "...")
    ranked = counts.most_common()
    assert tuple(w for w, _ in ranked[:3]) == sample.answers
    assert ranked[0][1] > ranked[1][1] > ranked[2][1] > ranked[3][1]  # strictly: the answer is unambiguous
    assert Counter(body.split())["..."] > ranked[0][1]  # the noise word ranks first, as RULER
    assert sample.prompt_tokens == length
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in counts)


def test_fwe_counts_follow_zipf(tokenizer):
    from evalkit.data.ruler.words import zipf_counts

    assert zipf_counts(1000, 4).tolist() == [607, 151, 67, 37]  # floor(1000 k^-2 / (pi^2/6)), by hand


# ---------------------------------------------------------------- qa


def _paragraphs(count: int) -> list[str]:
    """Distractor paragraphs cut from the built-in corpus."""
    from evalkit.data.corpus import load_corpus

    words = " ".join(load_corpus().documents[:40]).split()
    return [" ".join(words[i * 60 : (i + 1) * 60]) for i in range(count)]


GOLD = "The lighthouse on Varn Island was painted teal in 1911 by the keeper Odile Marsh."


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory) -> Path:
    other = _paragraphs(30)
    data = {
        "version": "v2.0",
        "data": [
            {
                "title": "Varn",
                "paragraphs": [
                    {
                        "context": GOLD,
                        "qas": [
                            {
                                "id": "q-impossible",
                                "question": "Who painted the moon?",
                                "answers": [],
                                "is_impossible": True,
                            },
                            {
                                "id": "q1",
                                "question": "Who painted the lighthouse?",
                                "is_impossible": False,
                                "answers": [
                                    {"text": "Odile Marsh", "answer_start": 64},
                                    {"text": "the keeper Odile Marsh", "answer_start": 53},
                                ],
                            },
                            {
                                "id": "q2",
                                "question": "When was the lighthouse painted?",
                                "is_impossible": False,
                                "answers": [{"text": "1911", "answer_start": 44}],
                            },
                        ],
                    },
                    {"context": other[0], "qas": []},
                ],
            },
            {"title": "Other", "paragraphs": [{"context": p, "qas": []} for p in other[1:]]},
        ],
    }
    path = tmp_path_factory.mktemp("qa") / "squad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def hotpot_file(tmp_path_factory) -> Path:
    other = _paragraphs(24)
    records = [
        {
            "_id": f"h{n}",
            "question": f"Which keeper painted lighthouse {n}?",
            "answer": f"Keeper {n}",
            "supporting_facts": [[f"Light {n}", 0], [f"Keeper {n}", 0]],
            "context": [
                [f"Light {n}", [f"Lighthouse {n} stands on a rock. ", "It was painted teal."]],
                [f"Keeper {n}", [f"Keeper {n} painted lighthouse {n} in 1911."]],
                *[[f"Other {n}-{k}", [other[n * 6 + k]]] for k in range(6)],
            ],
        }
        for n in range(4)
    ]
    path = tmp_path_factory.mktemp("qa") / "hotpot.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("length", [500, 1200, 3000])
def test_qa_1_gold_paragraph_once_among_distractors(tokenizer, squad_file, length):
    source = RulerSource(tokenizer, seed=0, qa_files=(str(squad_file),))
    sample = generator("qa_1")(source, length, 0)
    text = _text(tokenizer, sample)
    assert text.count(GOLD) == 1
    assert sample.answers == (
        "Odile Marsh",
        "the keeper Odile Marsh",
    )  # every reference; the impossible question skipped
    assert all(a in GOLD for a in sample.answers)
    assert "Question: Who painted the lighthouse?" in text
    docs = re.findall(r"Document (\d+):\n", text)
    assert [int(d) for d in docs] == list(range(1, len(docs) + 1)) and len(docs) == len(sample.provenance["docs"])
    longest = max(len(tokenizer(p)["input_ids"]) for p in _paragraphs(30)) + 8  # a document and its header
    assert length - longest < sample.prompt_tokens <= length  # as many documents as fit
    assert sample.answer_ids is None  # two references: no single span to teacher-force


def test_qa_1_single_answer_has_its_span(tokenizer, squad_file):
    sample = generator("qa_1")(RulerSource(tokenizer, qa_files=(str(squad_file),)), 1000, 1)
    assert sample.answers == ("1911",)
    assert tokenizer.decode(list(sample.prompt_ids) + list(sample.answer_ids)).endswith("Answer: 1911")


@pytest.mark.parametrize("length", [600, 2000])
def test_qa_2_both_gold_paragraphs_once(tokenizer, hotpot_file, squad_file, length):
    source = RulerSource(
        tokenizer, seed=5, qa_files=(str(squad_file), str(hotpot_file))
    )  # qa_2 picks the HotpotQA file
    sample = generator("qa_2")(source, length, 2)
    text = _text(tokenizer, sample)
    assert text.count("Light 2\nLighthouse 2 stands on a rock. It was painted teal.") == 1
    assert text.count("Keeper 2\nKeeper 2 painted lighthouse 2 in 1911.") == 1
    assert sample.answers == ("Keeper 2",) and "Keeper 2" in text
    assert sample.provenance["question_id"] == "h2" and sample.prompt_tokens <= length


def test_qa_without_its_file_is_skipped(tokenizer, squad_file):
    with pytest.raises(SkipTask, match="qa_1 needs a local SQuAD"):
        generator("qa_1")(RulerSource(tokenizer), 1000, 0)
    with pytest.raises(SkipTask, match="qa_2 needs a local HotpotQA"):
        generator("qa_2")(RulerSource(tokenizer, qa_files=(str(squad_file),)), 1000, 0)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("{not json", "cannot read"),
        ('{"rows": []}', "neither SQuAD"),
        ('{"data": [{"title": "x"}]}', "malformed"),
    ],
)
def test_bad_qa_files_say_what_is_wrong(tokenizer, tmp_path, content, match):
    path = tmp_path / "qa.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match):
        generator("qa_1")(RulerSource(tokenizer, qa_files=(str(path),)), 1000, 0)


# ---------------------------------------------------------------- all five


@pytest.mark.parametrize("task", ["vt", "cwe", "fwe", "qa_1", "qa_2"])
def test_deterministic_per_seed_and_sample(tokenizer, squad_file, hotpot_file, task):
    files = (str(squad_file), str(hotpot_file))
    build = generator(task)
    a, b = (build(RulerSource(tokenizer, seed=7, qa_files=files), 2000, 1) for _ in range(2))
    assert a.prompt_ids == b.prompt_ids and a.answers == b.answers and a.provenance == b.provenance
    other_seed = build(RulerSource(tokenizer, seed=8, qa_files=files), 2000, 1)
    other_index = build(RulerSource(tokenizer, seed=7, qa_files=files), 2000, 2)
    assert a.prompt_ids != other_seed.prompt_ids and a.prompt_ids != other_index.prompt_ids


@pytest.mark.parametrize("task, length", [("vt", 60), ("cwe", 400), ("fwe", 200)])
def test_too_short_lengths_say_so(tokenizer, task, length):
    with pytest.raises(ConfigError, match="too short"):
        generator(task)(RulerSource(tokenizer), length, 0)


@pytest.mark.parametrize("task", ["vt", "cwe", "fwe"])
def test_chat_prompts_are_exact_with_a_real_tokenizer(smollm2_tokenizer, task):
    tok = smollm2_tokenizer
    for length in (1500, 4096):
        sample = generator(task)(RulerSource(tok, chat="on", seed=0), length, 0)
        text = tok.decode(list(sample.prompt_ids))
        assert sample.prompt_tokens == length and text.count("<|im_start|>assistant\nAnswer:") == 1
