"""Needle-in-a-haystack samples, built token by token so every prompt has exactly L tokens.

(At a model's own limit, where L prompt tokens would leave the answer no positions, ``Fit`` makes
the prompt L - answer tokens: RULER's convention, prompt + answer within L.)

A prompt is ``head | haystack with needles | suffix | moved whitespace``: the head is the chat
template's part before the user message (or the BOS token), the suffix is the question, the
template's part after the message and the answer prefix. Every fixed part is tokenized on its
own and the haystack gets exactly the tokens left over, so the count never depends on how text
would re-tokenize. Needles go in at sentence boundaries.

Draws are seeded so that adding a length or depth changes nothing else. With ``draw="trial"``
(the default, Kamradt's layout) the needle and haystack come from a generator seeded by
(seed, trial): every depth and length of a trial reads the same text from the same start, so
cells differ only in where the needle sits and prompts share their prefix up to the needle,
which the runner computes once (``evalkit.models.prefix``). With ``draw="sample"`` each
(length, depth, trial) draws its own needle and haystack. Corpus haystacks start at a random
offset of the token stream read as a ring, so the start never depends on the length.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from evalkit.core.errors import ConfigError, DataError
from evalkit.data.corpus import load_corpus, separator_id, token_stream

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_PLACEHOLDER = "EVALKITUSERMESSAGE7F3A"  # rendered in the template's place of the user message, then split on
_REPEAT_TOKENS = 300
# keys for kv needles are "adjective-noun" pairs: thousands of them, word-like but meaningless together
_ADJECTIVES = """able angry bold brave bright broad busy calm cheap clean clever cold cool crisp curly damp dark deep
dry dull eager early easy empty fair fancy fast fierce flat fresh funny gentle giant glad golden
grand green happy hard heavy hollow honest huge humble icy jolly keen kind large late lazy light
little lively long loud lucky mighty modern narrow neat new nice noble odd old pale plain polite
proud quick quiet rapid rare red rich rough round royal rusty sad safe salty sharp shiny short shy
silent silly simple slow small smooth soft""".split()
_NOUNS = """apple anchor arrow badge basket beach bell bird blanket boat book bottle bridge brush bucket button
cabin cake camera candle canyon carpet castle chair cloud coat comet compass cookie crayon crown
desert diamond dolphin dragon drum eagle engine falcon feather fence fiddle forest fountain garden
glove guitar hammer harbor helmet hill island jacket jungle kettle kite ladder lantern lemon lion
magnet mango meadow mirror monkey moon mountain ocean orange owl paddle panda parrot pencil pepper
piano pillow planet pocket pond""".split()


@dataclass(frozen=True)
class HaystackOptions:
    haystack: str = "corpus"  # "corpus" | "noise" | "repeat"
    needle: str = "passkey"  # "passkey" | "kv" | "abcdigits"
    distractors: int = 0  # other needles of the same form (multi-key)
    values: int = 1  # several values for one key (multi-value), kv only
    queries: int = 1  # several keys asked (multi-query), kv only
    digits: int = 5  # length of numeric values / passkeys
    chat: str = "auto"  # "auto" | "on" | "off"
    draw: str = "trial"  # "trial": one needle and haystack per trial | "sample": one per (length, depth, trial)

    def __post_init__(self):  # every problem at once, as one error
        choices = {
            "haystack": ("corpus", "noise", "repeat"),
            "needle": ("passkey", "kv", "abcdigits"),
            "chat": ("auto", "on", "off"),
            "draw": ("trial", "sample"),
        }
        problems = [
            f"{k} {getattr(self, k)!r} is not one of {', '.join(v)}"
            for k, v in choices.items()
            if getattr(self, k) not in v
        ]
        problems += ["distractors must be >= 0, values and queries >= 1"] * (
            self.distractors < 0 or self.values < 1 or self.queries < 1
        )
        problems += ["values and queries above 1 need the kv needle"] * (
            (self.values > 1 or self.queries > 1) and self.needle != "kv"
        )
        problems += [f"digits {self.digits} is outside 1..18"] * (not 1 <= self.digits <= 18)
        if problems:
            raise ConfigError("bad haystack options: " + "; ".join(problems), "fix the needle task options")


@dataclass(frozen=True)
class Fit:
    """RULER's convention at a model's own limit: a length L the model holds (L <= limit) whose prompt
    of L tokens would leave no room within the limit for what follows it gets a prompt of L - room
    tokens instead, so prompt + answer fit in L. Shorter lengths keep prompts of exactly L tokens."""

    limit: int  # the model's max_position_embeddings
    room: Callable[[int], int]  # answer tokens -> tokens after the prompt (the answer, or a generation budget)

    def prompt_tokens(self, length: int, answer_tokens: int) -> int:
        room = self.room(answer_tokens)
        return length - room if length <= self.limit < length + room else length


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make generated __eq__ ambiguous
class NeedleSample:
    prompt_ids: np.ndarray  # (P,) int64: P = L, or L - room where ``Fit`` makes room at the model's limit
    answer_ids: np.ndarray  # (A,) int64, the gold tokens that follow the prompt
    answer_text: str
    needle_spans: tuple[tuple[int, int], ...]  # [start, end) of the target needle(s) in prompt_ids
    distractor_spans: tuple[tuple[int, int], ...]
    context_length: int  # the length asked for (L)
    depth: float  # requested, percent
    actual_depth: float  # percent of the haystack's tokens that precede the first target needle
    trial: int
    needle_kind: str
    info: dict = field(default_factory=dict)  # JSON-able


@dataclass
class _Needles:
    """What one sample says and asks, as text; targets are in text order."""

    targets: list[str]
    distractors: list[str]
    question: str
    prefix: str
    answer: str
    info: dict


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _chat_parts(tokenizer, chat: str) -> tuple[str, str] | None:
    """(head, tail) strings around the user message, or None when not chatting."""
    if chat not in ("auto", "on", "off"):
        raise ConfigError(f"bad chat mode {chat!r}", "use auto, on or off")
    template = getattr(tokenizer, "chat_template", None)
    if chat == "off" or (chat == "auto" and not template):
        return None
    if not template:
        raise ConfigError("chat is on but the tokenizer has no chat template", "use chat auto or off, or a chat model")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PLACEHOLDER}], add_generation_prompt=True, tokenize=False
    )
    head, found, tail = rendered.partition(_PLACEHOLDER)
    if not found or _PLACEHOLDER in tail:
        raise ConfigError("the chat template does not keep the user message verbatim", "use chat off")
    return head, tail


def _bos_ids(tokenizer) -> list[int]:
    """The BOS the tokenizer adds itself (Llama-style), kept when no chat template supplies one."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return [bos] if bos is not None and ids and ids[0] == bos and _encode(tokenizer, "a")[:1] != [bos] else []


def _answer_tokens(tokenizer, before_text: str, before_ids: list[int], answer: str) -> tuple[list[int], list[int]]:
    """(answer ids, whitespace ids that move to the prompt), tokenized as the answer follows the prompt."""
    full = _encode(tokenizer, before_text + answer)
    ids = full[len(before_ids) :] if full[: len(before_ids)] == before_ids else _encode(tokenizer, answer)
    moved = []
    # SmolLM2 makes " 48213" -> [" ", "4", ...]: the space token belongs to the prompt, or greedy scoring fails on it
    while ids and not tokenizer.decode(ids[:1]).strip():
        moved.append(ids.pop(0))
    if not ids:
        raise DataError(f"answer {answer!r} is only whitespace", "give a non-empty answer")
    return ids, moved


class _Boundaries:
    """Sentence boundaries in token arrays; each distinct token is decoded once and remembered."""

    def __init__(self, tokenizer):
        self.tokenizer, size = tokenizer, len(tokenizer)
        self.known, self.hard, self.soft, self.lead = (np.zeros(size, bool) for _ in range(4))

    def _learn(self, ids: np.ndarray) -> None:
        new = np.unique(ids)
        new = new[~self.known[new]]
        if not len(new):
            return
        texts = self.tokenizer.batch_decode(new[:, None].tolist(), clean_up_tokenization_spaces=False)
        ends = [t.rstrip().endswith((".", "!", "?")) for t in texts]
        # a newline, or a full stop with its trailing space inside the token, ends a sentence whatever follows
        self.hard[new] = [t.endswith("\n") or (e and t[-1:].isspace()) for t, e in zip(texts, ends)]
        self.soft[new] = ends  # "." ends a sentence only before whitespace: not in "3.14" or "os.path"
        self.lead[new] = [t[:1].isspace() for t in texts]
        self.known[new] = True

    def positions(self, hay: np.ndarray) -> np.ndarray:
        """Insertion points 0..n (before token i); the start and the end always count."""
        self._learn(hay)
        ok = np.zeros(len(hay) + 1, bool)
        ok[0] = ok[-1] = True
        if len(hay) > 1:
            prev, nxt = hay[:-1], hay[1:]
            ok[1:-1] = self.hard[prev] | (self.soft[prev] & self.lead[nxt])
        return np.flatnonzero(ok)


def _numbers(rng, count: int, digits: int) -> list[str]:
    low, high = 10 ** (digits - 1), 10**digits
    if count > high - low:
        raise ConfigError(f"{digits} digits give only {high - low} distinct values, {count} are needed", "raise digits")
    seen: dict[int, None] = {}  # unique values, so no answer is ambiguous
    while len(seen) < count:
        seen.setdefault(int(rng.integers(low, high)), None)
    return [str(v) for v in seen]


def _make_needles(options: HaystackOptions, rng) -> _Needles:
    o = options
    if o.needle == "passkey":
        key, *others = _numbers(rng, 1 + o.distractors, o.digits)
        doors = rng.choice(np.arange(1, 1000), size=o.distractors, replace=False).tolist()
        return _Needles(
            [f" The pass key is {key}. Remember it. {key} is the pass key."],
            [f" The pass key for door {d} is {v}." for d, v in zip(doors, others)],
            "What is the pass key?",
            "The pass key is",
            key,
            {"keys": [], "values": [key], "distractor_keys": [f"door {d}" for d in doors], "distractor_values": others},
        )
    if o.needle == "abcdigits":
        values = _numbers(rng, 26, o.digits)
        target = string.ascii_uppercase[int(rng.integers(26))]
        mapping = dict(zip(string.ascii_uppercase, values))
        return _Needles(
            [f"{target}={mapping[target]}\n"],
            [],
            "",
            f"{target}=",
            mapping[target],
            {"keys": [target], "values": [mapping[target]], "mapping": mapping},
        )
    combos = rng.choice(len(_ADJECTIVES) * len(_NOUNS), size=o.queries + o.distractors, replace=False)
    keys = [f"{_ADJECTIVES[c // len(_NOUNS)]}-{_NOUNS[c % len(_NOUNS)]}" for c in combos.tolist()]
    numbers = _numbers(rng, o.queries * o.values + o.distractors, o.digits)
    asked, others = keys[: o.queries], keys[o.queries :]
    values = [numbers[q * o.values : (q + 1) * o.values] for q in range(o.queries)]
    distractor_values = numbers[o.queries * o.values :]
    sentence = " The special magic number for {} is: {}."
    if o.values == 1 and o.queries == 1:
        question = f"What is the special magic number for {asked[0]} mentioned in the provided text?"
        prefix = f"The special magic number for {asked[0]} mentioned in the provided text is"
    else:
        names = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + " and " + asked[-1]
        question = f"What are all the special magic numbers for {names} mentioned in the provided text?"
        prefix = f"The special magic numbers for {names} mentioned in the provided text are"
    return _Needles(
        [sentence.format(k, v) for k, vs in zip(asked, values) for v in vs],
        [sentence.format(k, v) for k, v in zip(others, distractor_values)],
        question,
        prefix,
        ", ".join(v for vs in values for v in vs),
        {"keys": asked, "values": values, "distractor_keys": others, "distractor_values": distractor_values},
    )


class _Builder:
    def __init__(self, tokenizer, options: HaystackOptions, stream):
        self.tok, self.options, self.stream = tokenizer, options, stream
        self.chat = _chat_parts(tokenizer, "off" if options.needle == "abcdigits" else options.chat)
        self.head_ids = _encode(tokenizer, self.chat[0]) if self.chat else _bos_ids(tokenizer)
        self.boundaries = _Boundaries(tokenizer)
        newline = _encode(tokenizer, "\n")
        self.newline = newline[0] if len(newline) == 1 else None

    @cached_property
    def tokens(self) -> np.ndarray:
        """The corpus stream, its document separators (often the chat's end-of-turn token) read as newlines."""
        if self.stream is None:
            self.stream = token_stream(load_corpus(), self.tok)
        tokens = self.stream.tokens
        return tokens if self.newline is None else np.where(tokens == separator_id(self.tok), self.newline, tokens)

    def haystack(self, n: int, rng, needles: _Needles) -> tuple[np.ndarray, dict]:
        kind = "abcdigits" if self.options.needle == "abcdigits" else self.options.haystack
        if kind == "abcdigits":  # drawn from the sample's generator: its seed (``draw_seed``) regenerates it
            return self._abc_lines(n, rng, needles.info["mapping"], needles.info["keys"][0]), {
                "haystack_source": "abcdigits"
            }
        if kind == "noise":
            unit = np.asarray(_encode(self.tok, " " + NOISE), np.int64)
            return np.tile(unit, n // len(unit) + 1)[:n], {"haystack_source": "noise"}
        tokens = self.tokens
        if kind == "corpus":
            if len(tokens) < n:
                raise DataError(
                    f"corpus {self.stream.corpus} has {len(tokens)} tokens, fewer than the {n} a haystack needs",
                    "give a larger --dataset (builtin:python-stdlib holds about 3.3M tokens) or shorter --lengths",
                )
            offset = int(rng.integers(len(tokens)))
            return np.take(tokens, np.arange(offset, offset + n), mode="wrap"), {
                "haystack_source": self.stream.corpus,
                "haystack_offset": offset,
            }
        starts = self.stream.doc_starts
        sizes = np.diff(np.append(starts, len(tokens))) - 1  # each document without its separator
        usable = np.flatnonzero(sizes >= 32)
        if not len(usable):
            raise DataError(
                f"corpus {self.stream.corpus} has no document of 32 tokens or more", "give a larger dataset"
            )
        doc = int(rng.choice(usable))
        passage = tokens[starts[doc] : starts[doc] + min(sizes[doc], _REPEAT_TOKENS)]
        cut = self.boundaries.positions(passage)
        cut = cut[(cut >= 32) & (cut < len(passage))]  # end the passage on a sentence, when one ends late enough
        unit = np.concatenate([passage[: cut[-1]] if len(cut) else passage, _encode(self.tok, "\n")]).astype(np.int64)
        return np.tile(unit, n // len(unit) + 1)[:n], {
            "haystack_source": self.stream.corpus,
            "haystack_offset": int(starts[doc]),
            "repeat_document": doc,
        }

    def _abc_lines(self, n: int, rng, mapping: dict, target: str) -> np.ndarray:
        """Lines KEY=DIGITS of the 25 other keys in random order; leftover tokens become leading blank lines."""
        keys = [k for k in mapping if k != target]
        lines = [_encode(self.tok, f"{k}={mapping[k]}\n") for k in keys]
        sizes = np.array([len(x) for x in lines])
        out, left = [], n
        while left >= sizes.min():
            pick = int(rng.integers(len(keys)))
            if sizes[pick] > left:
                fits = np.flatnonzero(sizes <= left)
                pick = int(fits[rng.integers(len(fits))])
            out.extend(lines[pick])
            left -= int(sizes[pick])
        if left and self.newline is None:
            raise ConfigError("this tokenizer has no single newline token to pad ABCDigits lines", "use another needle")
        return np.asarray([self.newline] * left + out, np.int64)

    def sample(self, length: int, depth: float, trial: int, seed: int, fit: Fit | None = None) -> NeedleSample:
        o, tok = self.options, self.tok
        sample_seed = [seed % 2**63, length, int(round(depth * 100)), trial]
        rng = np.random.default_rng(sample_seed)
        draw_seed = sample_seed if o.draw == "sample" else [seed % 2**63, trial]
        drawn = rng if o.draw == "sample" else np.random.default_rng(draw_seed)  # needle and haystack
        needles = _make_needles(o, drawn)
        if o.needle == "abcdigits":
            suffix, sep = needles.prefix, ""  # the query line itself; the digits follow "=" directly
        else:
            middle = self.chat[1] if self.chat else " "
            suffix, sep = f"\n\n{needles.question}{middle}{needles.prefix}", " "
        suffix_ids = _encode(tok, suffix)
        answer_ids, moved = _answer_tokens(tok, suffix, suffix_ids, sep + needles.answer)
        needle_ids = [_encode(tok, t) for t in needles.targets + needles.distractors]
        fixed = len(self.head_ids) + sum(map(len, needle_ids)) + len(suffix_ids) + len(moved)
        tokens = fit.prompt_tokens(length, len(answer_ids)) if fit else length  # the prompt's own length
        n, minimum = tokens - fixed, fixed + len(needle_ids) - 1  # k needles need k distinct insertion points 0..n
        if tokens < minimum:
            raise ConfigError(
                f"context length {length} is too short for this {o.needle} prompt",
                f"use at least {minimum} tokens (a few more where random keys or values tokenize longer)",
            )
        hay, hay_info = self.haystack(n, drawn, needles)
        where = _place(self.boundaries.positions(hay), n, depth, len(needles.targets), len(needles.distractors), rng)
        pieces, spans, last, cursor = [np.asarray(self.head_ids, np.int64)], {}, 0, len(self.head_ids)
        for i in sorted(range(len(needle_ids)), key=lambda i: where[i]):
            pieces += [hay[last : where[i]], np.asarray(needle_ids[i], np.int64)]
            cursor += where[i] - last
            spans[i], last = (cursor, cursor + len(needle_ids[i])), where[i]
            cursor += len(needle_ids[i])
        pieces += [hay[last:], np.asarray(suffix_ids + moved, np.int64)]
        prompt = np.concatenate(pieces).astype(np.int64)
        assert len(prompt) == tokens, (len(prompt), tokens)  # exact by construction
        k = len(needles.targets)
        info = {
            **needles.info,
            "question": needles.question,
            "answer_prefix": needles.prefix,
            "chat": self.chat is not None,
            "haystack": "abcdigits" if o.needle == "abcdigits" else o.haystack,
            "haystack_tokens": int(n),
            "prompt_tokens": int(tokens),
            "draw_seed": draw_seed,
            **hay_info,
        }
        return NeedleSample(
            prompt,
            np.asarray(answer_ids, np.int64),
            needles.answer,
            tuple(spans[i] for i in range(k)),
            tuple(spans[i] for i in range(k, len(needle_ids))),
            length,
            float(depth),
            100.0 * min(where[:k]) / n if n else 0.0,
            trial,
            o.needle,
            info,
        )


def _place(bounds: np.ndarray, n: int, depth: float, targets: int, distractors: int, rng) -> list[int]:
    """Targets at the sentence boundaries nearest the depth, distractors at random other ones.

    Where too few sentences end (short contexts, code, tables) any token boundary serves.
    """
    if len(bounds) < targets:
        bounds = np.arange(n + 1)
    near = bounds[np.argsort(np.abs(bounds - depth / 100 * n), kind="stable")]  # ties go to the earlier boundary
    chosen, rest = sorted(near[:targets].tolist()), near[targets:]
    if len(rest) < distractors:
        rest = np.setdiff1d(np.arange(n + 1), chosen)
    return chosen + rng.choice(rest, size=distractors, replace=False).tolist()


def build_samples(
    tokenizer,
    options: HaystackOptions,
    lengths: list[int],
    depths: list[float],
    trials: int,
    seed: int,
    stream=None,
    fit: Fit | None = None,
) -> list[NeedleSample]:
    """One sample per (length, depth, trial), in that nesting order; prompts of exactly each length,
    except where ``fit`` makes room for the answer at the model's limit."""
    if trials < 1 or any(not 0 <= d <= 100 for d in depths) or any(length < 1 for length in lengths):
        raise ConfigError(
            f"bad grid: lengths {lengths}, depths {depths}, trials {trials}",
            "give positive lengths, depths within 0..100 and at least one trial",
        )
    builder = _Builder(tokenizer, options, stream)
    return [
        builder.sample(length, depth, trial, seed, fit)
        for length in lengths
        for depth in depths
        for trial in range(trials)
    ]


def load_samples_file(path, tokenizer, chat: str = "auto") -> list[NeedleSample]:
    """Samples from JSONL: prompt, answer; optional depth, needle (text to locate), answer_prefix (appended verbatim).

    Prompts are used verbatim: ``chat="auto"`` applies no template here (``"on"`` does), as a
    file's prompts are usually already what the model should see. A record with ``prompt_ids``
    and ``answer_ids`` (``evalkit export`` writes them) is scored on exactly those tokens.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist", "check the path given to --samples-file")
    parts, samples = None, []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{where} is not valid JSON", "fix or remove that line") from None
            if isinstance(record, dict) and ("prompt_ids" in record or "answer_ids" in record):
                if chat == "on":
                    raise DataError(
                        f"{where} gives token ids, which are used verbatim: --chat on cannot wrap them",
                        "drop --chat on, or give the prompt as text only",
                    )
                samples.append(_ids_sample(record, len(tokenizer), where, len(samples)))
            else:
                parts = parts or [
                    _chat_parts(tokenizer, "off" if chat == "auto" else chat)
                ]  # once, for text records only
                samples.append(_file_sample(record, tokenizer, parts[0], where, len(samples)))
    if not samples:
        raise DataError(f"samples file {path} holds no samples", "write one JSON object per line")
    return samples


def _file_sample(record, tokenizer, parts, where: str, index: int) -> NeedleSample:
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a JSON object", 'write {"prompt": ..., "answer": ...}')
    missing = [f for f in ("prompt", "answer") if not isinstance(record.get(f), str) or not record[f].strip()]
    if missing:
        raise DataError(
            f"{where} has no text field {' or '.join(map(repr, missing))}",
            'each line needs "prompt" and "answer" strings',
        )
    for name in ("needle", "answer_prefix"):
        if name in record and not isinstance(record[name], str):
            raise DataError(f"{where}: {name!r} must be a string", f"fix the {name} field")
    depth = record.get("depth")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 100):
        raise DataError(f"{where}: depth {depth!r} is not a number in 0..100", "fix or drop the depth field")
    head, tail = parts or ("", "")
    prompt, answer, needle = record["prompt"], record["answer"].strip(), record.get("needle")
    text = head + prompt + tail + record.get("answer_prefix", "")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    # a space joins the answer to a prefix that ends in a word or punctuation ("... is" 1234), not after "=" or a
    # newline
    sep = " " if text and (text[-1].isalnum() or text[-1] in ".,;:!?") else ""
    answer_ids, moved = _answer_tokens(tokenizer, text, ids, sep + answer)
    bos = [] if parts else _bos_ids(tokenizer)
    content = [i for i, (s, _) in enumerate(offsets) if len(head) <= s < len(head) + len(prompt)]
    spans, actual = (), float("nan")
    if needle:
        at = prompt.find(needle)
        if at < 0:
            raise DataError(
                f"{where}: the needle text is not in the prompt", "copy the needle exactly as the prompt has it"
            )
        c0, c1 = len(head) + at, len(head) + at + len(needle)
        hit = [i for i, (s, e) in enumerate(offsets) if s < c1 and e > c0]
        spans = ((len(bos) + hit[0], len(bos) + hit[-1] + 1),)
        filler = len(content) - len(hit)  # as for built samples: percent of the non-needle tokens before it
        actual = 100.0 * (hit[0] - content[0]) / filler if filler > 0 else 0.0
    depth = float(depth) if depth is not None else actual
    prompt_ids = np.asarray(bos + ids + moved, np.int64)
    info = {
        "source": where,
        "needle_text": needle,
        "answer_prefix": record.get("answer_prefix", ""),
        "chat": parts is not None,
    }
    return NeedleSample(
        prompt_ids,
        np.asarray(answer_ids, np.int64),
        answer,
        spans,
        (),
        len(prompt_ids),
        depth,
        actual if needle else depth,
        index,
        "file",
        info,
    )


def _ids_sample(record: dict, vocab: int, where: str, index: int) -> NeedleSample:
    """A record with exact token ids: no tokenizing, no template, no moved whitespace."""
    ids = {}
    for name in ("prompt_ids", "answer_ids"):
        value = record.get(name)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in value)
        ):
            raise DataError(
                f"{where}: {name!r} must be a non-empty list of token ids below {vocab}",
                "give both prompt_ids and answer_ids, as evalkit export writes them",
            )
        ids[name] = np.asarray(value, np.int64)
    if not isinstance(record.get("answer"), str) or not record["answer"].strip():
        raise DataError(f"{where} has no text field 'answer'", "give the answer text beside answer_ids")
    prompt = ids["prompt_ids"]
    spans = ()
    start, end = record.get("needle_start", -1), record.get("needle_end", -1)
    if start is not None and start >= 0:
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(prompt)):
            raise DataError(
                f"{where}: needle span [{start}, {end}) is not inside the {len(prompt)} prompt ids",
                "fix needle_start and needle_end, or drop them",
            )
        spans = ((start, end),)
    numbers = {}
    for name in ("depth", "actual_depth"):
        value = record.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100
        ):
            raise DataError(f"{where}: {name} {value!r} is not a number in 0..100", f"fix or drop the {name} field")
        numbers[name] = value
    trial = record.get("trial", index)
    if isinstance(trial, bool) or not isinstance(trial, int):
        raise DataError(f"{where}: trial {trial!r} is not an integer", "fix or drop the trial field")
    actual = numbers["actual_depth"] if numbers["actual_depth"] is not None else numbers["depth"]
    depth = numbers["depth"] if numbers["depth"] is not None else actual
    depth, actual = (float("nan") if v is None else float(v) for v in (depth, actual))
    info = {"source": where, "chat": None, "ids": True}
    return NeedleSample(
        prompt, ids["answer_ids"], record["answer"].strip(), spans, (), len(prompt), depth, actual, trial, "file", info
    )


def abcdigits_all_keys(tokenizer, length: int, trial: int, seed: int, digits: int = 5) -> list[NeedleSample]:
    """ABCDigits over all keys: ONE haystack of KEY=DIGITS lines holding all 26 keys, asked once per
    key (26 samples that share the haystack and differ in the query line "K=").

    The 26 lines appear once each, as a block at a random line boundary of filler lines drawn from
    the same 26 (a key's value is the same wherever its line repeats, so no answer is ambiguous).
    The prompts are ``length`` tokens, less one where a query line tokenizes shorter than the longest.
    """
    builder = _Builder(tokenizer, HaystackOptions(needle="abcdigits", digits=digits), None)
    draw_seed = [seed % 2**63, length, trial]
    rng = np.random.default_rng(draw_seed)
    values = _numbers(rng, 26, digits)
    mapping = dict(zip(string.ascii_uppercase, values))
    keys = list(rng.permutation(list(string.ascii_uppercase)))
    lines = [_encode(tokenizer, f"{k}={mapping[k]}\n") for k in keys]
    block = np.asarray([t for line in lines for t in line], np.int64)
    queries = [_encode(tokenizer, f"{k}=") for k in string.ascii_uppercase]
    n = length - len(builder.head_ids) - len(block) - max(map(len, queries))
    if n < 0:
        raise ConfigError(
            f"context length {length} is too short for 26 ABCDigits lines", f"use at least {length - n} tokens"
        )
    filler = builder._abc_lines(n, rng, mapping, target=None)
    breaks = np.flatnonzero(filler == builder.newline) + 1 if builder.newline is not None else np.array([], int)
    at = int(rng.choice(np.append(breaks, 0)))  # a line boundary, or the start
    head = np.asarray(builder.head_ids, np.int64)
    hay = np.concatenate([head, filler[:at], block, filler[at:]])
    starts = len(head) + at + np.concatenate([[0], np.cumsum([len(x) for x in lines])[:-1]])
    where = {k: (int(s), int(s) + len(x)) for k, s, x in zip(keys, starts, lines)}
    out = []
    for key, query in zip(string.ascii_uppercase, queries):
        answer_ids, moved = _answer_tokens(tokenizer, f"{key}=", query, mapping[key])
        prompt = np.concatenate([hay, np.asarray(query + moved, np.int64)])
        start = where[key][0]
        info = {
            "keys": [key],
            "values": [mapping[key]],
            "mapping": mapping,
            "question": "",
            "answer_prefix": f"{key}=",
            "chat": False,
            "haystack": "abcdigits",
            "haystack_tokens": int(len(filler) + len(block)),
            "draw_seed": draw_seed,
            "haystack_source": "abcdigits",
            "mode": "all_keys",
        }
        out.append(
            NeedleSample(
                prompt,
                np.asarray(answer_ids, np.int64),
                mapping[key],
                (where[key],),
                (),
                len(prompt),
                100.0 * (start - len(head)) / max(1, len(filler) + len(block)),
                100.0 * (start - len(head)) / max(1, len(filler) + len(block)),
                trial,
                "abcdigits",
                info,
            )
        )
    return out
