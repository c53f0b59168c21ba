"""Needle-in-a-haystack samples: exact lengths, needle placement, answers, determinism, errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from evalkit.core.errors import ConfigError, DataError
from evalkit.data.corpus import TokenStream, load_corpus, token_stream
from evalkit.data.haystack import HaystackOptions, build_samples, load_samples_file

CHAT = (
    "{% for m in messages %}<|user|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LENGTHS = {"passkey": [128, 200, 513], "kv": [256, 300, 513], "abcdigits": [128, 200, 513]}
SMOLLM2 = Path("/root/.cache/evalkit/models/smollm2-135m")


@pytest.fixture(scope="module")
def stream(tokenizer):
    return token_stream(load_corpus(), tokenizer)


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chatty = copy.deepcopy(tokenizer)
    chatty.chat_template = CHAT
    return chatty


def text(tok, ids) -> str:
    return tok.decode(list(ids), clean_up_tokenization_spaces=False)


def expected_needles(sample) -> tuple[list[str], list[str]]:
    """The needle sentences a sample's info says it holds, targets in text order."""
    info = sample.info
    if sample.needle_kind == "passkey":
        v = info["values"][0]
        return (
            [f"The pass key is {v}. Remember it. {v} is the pass key."],
            [f"The pass key for {k} is {d}." for k, d in zip(info["distractor_keys"], info["distractor_values"])],
        )
    if sample.needle_kind == "abcdigits":
        return [f"{info['keys'][0]}={info['values'][0]}"], []
    form = "The special magic number for {} is: {}."
    return (
        [form.format(k, v) for k, vs in zip(info["keys"], info["values"]) for v in vs],
        [form.format(k, v) for k, v in zip(info["distractor_keys"], info["distractor_values"])],
    )


def check_sample(tok, sample, length):
    assert sample.prompt_ids.dtype == np.int64 and sample.prompt_ids.shape == (length,)
    assert sample.context_length == length
    targets, distractors = expected_needles(sample)
    assert [text(tok, sample.prompt_ids[a:b]).strip() for a, b in sample.needle_spans] == targets
    assert [text(tok, sample.prompt_ids[a:b]).strip() for a, b in sample.distractor_spans] == distractors
    spans = sorted(sample.needle_spans + sample.distractor_spans)
    assert all(0 <= a < b <= length for a, b in spans)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), "needles overlap"
    assert text(tok, sample.answer_ids).strip() == sample.answer_text
    assert text(tok, sample.answer_ids[:1]).strip(), "a whitespace token leads the answer"
    json.dumps(sample.info)


@pytest.mark.parametrize("chat", ["off", "on"])
@pytest.mark.parametrize("haystack", ["corpus", "noise", "repeat"])
@pytest.mark.parametrize("needle", ["passkey", "kv", "abcdigits"])
def test_exact_length_needles_and_answer(tokenizer, chat_tokenizer, stream, needle, haystack, chat):
    tok = chat_tokenizer if chat == "on" else tokenizer
    options = HaystackOptions(
        haystack=haystack, needle=needle, distractors=1 if needle != "abcdigits" else 0, chat=chat
    )
    samples = build_samples(tok, options, LENGTHS[needle], [0, 35, 100], trials=2, seed=7, stream=stream)
    assert len(samples) == 3 * 3 * 2
    for s in samples:
        check_sample(tok, s, s.context_length)
        prompt = text(tok, s.prompt_ids)
        if needle == "abcdigits":
            assert prompt.endswith("\n" + s.info["answer_prefix"]) and "<|user|>" not in prompt
        elif chat == "on":
            assert prompt.startswith("<|user|>\n") and prompt.rstrip().endswith(
                "\n<|assistant|>\n" + s.info["answer_prefix"]
            )
        else:
            assert prompt.rstrip().endswith(s.info["question"] + " " + s.info["answer_prefix"])


def test_depth_is_reached_and_the_ends_work(tokenizer):
    options = HaystackOptions(haystack="noise", chat="off")
    depths = [float(d) for d in range(0, 101, 10)]
    samples = build_samples(tokenizer, options, [1024], depths, trials=1, seed=0)
    for s in samples:
        assert abs(s.actual_depth - s.depth) <= 3, (s.depth, s.actual_depth)
    first, last = samples[0], samples[-1]
    assert first.needle_spans[0][0] == 0 and first.actual_depth == 0
    assert last.actual_depth == 100
    after = text(tokenizer, last.prompt_ids[last.needle_spans[0][1] :])
    assert after.startswith("\n\nWhat is the pass key?")


def test_corpus_depth_is_close_for_long_contexts(tokenizer, stream):
    samples = build_samples(
        tokenizer, HaystackOptions(needle="kv"), [4096], [10, 50, 90], trials=2, seed=3, stream=stream
    )
    assert all(abs(s.actual_depth - s.depth) <= 5 for s in samples)


def test_needle_sits_at_a_sentence_boundary(tokenizer):
    s = build_samples(tokenizer, HaystackOptions(haystack="noise"), [600], [43], trials=1, seed=1)[0]
    before = text(tokenizer, s.prompt_ids[: s.needle_spans[0][0]])
    assert before.endswith((".", "!", "?", "\n"))


def test_abcdigits_haystack_is_only_key_lines(tokenizer):
    for s in build_samples(
        tokenizer, HaystackOptions(needle="abcdigits", digits=4), [300, 517], [0, 50, 100], 2, seed=5
    ):
        lines = text(tokenizer, s.prompt_ids).split("\n")
        target, value = s.info["keys"][0], s.answer_text
        assert lines[-1] == f"{target}=" and re.fullmatch(r"\d{4}", value)
        body = [line for line in lines[:-1] if line]  # blank lines pad to the exact length
        assert all(re.fullmatch(r"[A-Z]=\d{4}", line) for line in body)
        seen: dict[str, str] = {}
        for line in body:
            key, digits = line.split("=")
            assert seen.setdefault(key, digits) == digits, "a key changed its value"
        assert [line.split("=")[0] for line in body].count(target) == 1
        assert seen[target] == value and len(seen) > 5


def test_same_seed_same_samples_other_trial_differs(tokenizer, stream):
    options = HaystackOptions(needle="kv", distractors=2)
    one = build_samples(tokenizer, options, [300, 400], [20, 80], trials=2, seed=11, stream=stream)
    two = build_samples(tokenizer, options, [300, 400], [20, 80], trials=2, seed=11, stream=stream)
    for a, b in zip(one, two):
        assert np.array_equal(a.prompt_ids, b.prompt_ids) and np.array_equal(a.answer_ids, b.answer_ids)
        assert (a.needle_spans, a.distractor_spans, a.info) == (b.needle_spans, b.distractor_spans, b.info)
    t0, t1 = one[0], one[1]
    assert (t0.depth, t0.trial, t1.trial) == (20, 0, 1)
    assert t0.info["values"] != t1.info["values"] and t0.info["keys"] != t1.info["keys"]
    assert t0.info["haystack_offset"] != t1.info["haystack_offset"]
    other_seed = build_samples(tokenizer, options, [300], [20], trials=1, seed=12, stream=stream)[0]
    assert not np.array_equal(other_seed.prompt_ids, t0.prompt_ids)
    # adding a length or a depth leaves the other samples as they were
    alone = build_samples(tokenizer, options, [400], [80], trials=1, seed=11, stream=stream)[0]
    assert np.array_equal(alone.prompt_ids, one[-2].prompt_ids)


def test_multi_key_value_query_shapes(tokenizer):
    def one(**kw):
        s = build_samples(tokenizer, HaystackOptions(haystack="noise", **kw), [1024], [50], 1, seed=2)[0]
        check_sample(tokenizer, s, 1024)
        return s

    s = one(needle="kv", values=3)
    assert len(s.needle_spans) == 3 and len(s.distractor_spans) == 0
    assert s.answer_text == ", ".join(s.info["values"][0]) and "all the special magic numbers" in s.info["question"]
    s = one(needle="kv", queries=2, distractors=4)
    assert len(s.needle_spans) == 2 and len(s.distractor_spans) == 4
    assert s.answer_text == ", ".join(v[0] for v in s.info["values"])
    assert " and ".join(s.info["keys"]) in s.info["question"]
    assert len(set(s.info["keys"] + s.info["distractor_keys"])) == 6
    s = one(needle="kv", queries=2, values=2)
    assert len(s.needle_spans) == 4 and s.answer_text.count(", ") == 3
    s = one(needle="passkey", distractors=3)
    assert (
        len(s.distractor_spans) == 3 and text(tokenizer, s.prompt_ids).count("The pass key is") == 2
    )  # needle + prefix


def test_too_short_names_the_minimum(tokenizer):
    options = HaystackOptions(haystack="noise", chat="off")
    with pytest.raises(ConfigError, match=r"context length 20 .*at least (\d+)") as info:
        build_samples(tokenizer, options, [20], [50], 1, seed=0)
    minimum = int(re.search(r"at least (\d+)", str(info.value)).group(1))
    assert build_samples(tokenizer, options, [minimum], [50], 1, seed=0)[0].prompt_ids.shape == (minimum,)
    with pytest.raises(ConfigError):
        build_samples(tokenizer, options, [minimum - 1], [50], 1, seed=0)


def test_option_errors(tokenizer):
    with pytest.raises(ConfigError, match="chat template"):
        build_samples(tokenizer, HaystackOptions(chat="on"), [512], [50], 1, seed=0)
    with pytest.raises(ConfigError, match="kv"):
        HaystackOptions(needle="passkey", values=2)
    with pytest.raises(ConfigError, match="needle"):
        HaystackOptions(needle="haystack")
    with pytest.raises(ConfigError, match="depths"):
        build_samples(tokenizer, HaystackOptions(), [512], [120], 1, seed=0)


def test_short_stream_is_a_data_error(tokenizer, stream):
    tiny = TokenStream("tiny", stream.tokens[:50], np.zeros(1, np.int64))
    with pytest.raises(DataError, match="fewer than"):
        build_samples(tokenizer, HaystackOptions(), [513], [50], 1, seed=0, stream=tiny)


def test_samples_file(tmp_path, tokenizer, chat_tokenizer):
    needle = "The pass key is 31415. Remember it."
    prompt = "The grass is green. " * 10 + needle + " The sky is blue." * 5 + "\n\nWhat is the pass key?"
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"prompt": prompt, "answer": "31415", "needle": needle, "answer_prefix": " The pass key is"})
        + "\n\n"
        + json.dumps({"prompt": prompt, "answer": "31415", "depth": 66})
        + "\n"
    )
    for tok, chat in ((tokenizer, "auto"), (chat_tokenizer, "auto"), (chat_tokenizer, "on")):
        first, second = load_samples_file(path, tok, chat=chat)
        assert len(first.prompt_ids) == first.context_length and first.needle_kind == "file"
        ((a, b),) = first.needle_spans
        assert text(tok, first.prompt_ids[a:b]).strip() == needle
        assert 0 < first.actual_depth < 100 and first.depth == first.actual_depth
        assert text(tok, first.answer_ids).strip() == "31415" and text(tok, first.answer_ids[:1]).strip()
        assert text(tok, first.prompt_ids).rstrip().endswith("The pass key is")
        assert second.depth == 66 and second.needle_spans == () and second.trial == 1
        assert ("<|assistant|>" in text(tok, second.prompt_ids)) == (chat == "on")


def test_samples_file_prompts_are_verbatim_by_default(tmp_path, chat_tokenizer):
    """A chat tokenizer's template is not wrapped around a file's prompts unless --chat on says so."""
    prompt = "".join(f"{k}={v}\n" for k, v in zip("ABCDEFGHI", range(11111, 99999, 9876))) + "E="
    path = tmp_path / "abc.jsonl"
    path.write_text(json.dumps({"prompt": prompt, "answer": "51615"}) + "\n")
    (auto,), (off,), (on,) = (load_samples_file(path, chat_tokenizer, chat=c) for c in ("auto", "off", "on"))
    verbatim = chat_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert auto.prompt_ids.tolist() == off.prompt_ids.tolist() == verbatim
    assert text(chat_tokenizer, on.prompt_ids).startswith("<|user|>\n" + prompt)


@pytest.mark.parametrize(
    "line, message",
    [
        ({"prompt": "x"}, "line 2 has no text field 'answer'"),
        ({"prompt": "x", "answer": "1", "needle": "nope"}, "line 2: the needle text is not in the prompt"),
        ({"prompt": "x", "answer": "1", "depth": "deep"}, "line 2: depth"),
        ("{not json", "line 2 is not valid JSON"),
    ],
)
def test_samples_file_errors_name_the_line(tmp_path, tokenizer, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "a b c", "answer": "1"})
    path.write_text(good + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_samples_file(path, tokenizer)


@pytest.mark.slow
def test_smollm2_passkey_chat():
    if not SMOLLM2.is_dir():
        pytest.skip(f"no SmolLM2 tokenizer at {SMOLLM2}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    for s in build_samples(tok, HaystackOptions(), [1024], [0, 50, 100], trials=2, seed=0):
        check_sample(tok, s, 1024)
        assert s.info["chat"] and text(tok, s.answer_ids[:1]).isdigit()
        assert text(tok, s.prompt_ids).endswith("<|im_start|>assistant\nThe pass key is ")
        assert text(tok, s.prompt_ids[-1:]) == " "  # the space before the digits belongs to the prompt
