"""RULER's synthetic tasks (NVIDIA, arXiv 2404.06654), built token-exactly with the model's tokenizer.

Every task's generator is a function ``build(source: RulerSource, length: int, index: int) -> RulerSample``
registered in ``GENERATORS`` by its RULER name. Prompts follow RULER's templates: the instruction,
the context, the query, then (after the chat template's tail, when chatting) the answer prefix.
``PromptFrame`` tokenizes the fixed parts once and says how many tokens the context may take, so
a generator fills exactly that budget (or, for lists that cannot be cut, the longest list that fits).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evalkit.data.haystack import _answer_tokens, _bos_ids, _chat_parts, _encode


@dataclass(frozen=True)
class RulerSource:
    """What generators read: the tokenizer, the chat mode, the run's seed, the essay haystack's token
    stream (``evalkit.data.corpus.TokenStream``, None for the built-in corpus loaded on demand) and the
    local QA files (SQuAD v2 / HotpotQA JSON paths)."""

    tokenizer: Any
    chat: str = "auto"  # "auto" | "on" | "off", as the needle task
    seed: int = 0
    stream: Any = None
    qa_files: tuple[str, ...] = ()

    def rng(self, task: str, length: int, index: int) -> np.random.Generator:
        """The sample's own generator: adding a task, length or sample changes no other sample."""
        return np.random.default_rng([self.seed % 2**63, sum(task.encode()), len(task), length, index])


@dataclass(frozen=True)
class RulerSample:
    task: str  # RULER's name: niah_single_1, vt, cwe, qa_1, ...
    context_length: int  # the requested length
    index: int  # sample number within (task, length)
    prompt_ids: tuple[int, ...]  # the whole prompt, chat template and answer prefix included
    answers: tuple[str, ...]  # every reference; RULER's string match (all or part) scores the output
    answer_ids: (
        tuple[int, ...] | None
    )  # the gold continuation where the answer is one span (teacher-forced score), else None
    provenance: dict = field(default_factory=dict)  # source, offset, spans, seed: enough to rebuild the prompt by hand

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class PromptFrame:
    """``head | before | CONTEXT | after | chat tail | answer prefix | moved whitespace`` in token ids."""

    head: tuple[int, ...]
    before: tuple[int, ...]
    tail: tuple[int, ...]  # after + chat tail + answer prefix + whitespace moved out of the answer
    answer_ids: tuple[int, ...] | None

    @classmethod
    def build(
        cls, tokenizer, chat: str, before: str, after: str, answer_prefix: str, answer: str | None = None
    ) -> PromptFrame:
        """``answer``: the single-span gold answer (teacher-forced scoring), tokenized as it follows the prefix."""
        parts = _chat_parts(tokenizer, chat)
        head = _encode(tokenizer, parts[0]) if parts else _bos_ids(tokenizer)
        middle = parts[1] if parts else "\n"
        tail_text = after + middle + answer_prefix
        tail = _encode(tokenizer, tail_text)
        answer_ids = None
        if answer is not None:
            ids, moved = _answer_tokens(tokenizer, tail_text, tail, " " + answer)
            tail, answer_ids = tail + moved, tuple(ids)
        return cls(tuple(head), tuple(_encode(tokenizer, before)), tuple(tail), answer_ids)

    def budget(self, length: int) -> int:
        """Tokens left for the context in a prompt of ``length`` tokens (negative: the frame alone is too long)."""
        return length - len(self.head) - len(self.before) - len(self.tail)

    def assemble(self, context_ids) -> tuple[int, ...]:
        return (*self.head, *self.before, *map(int, context_ids), *self.tail)

    @property
    def context_start(self) -> int:
        """Where the context starts in the assembled prompt: add it to context-relative spans."""
        return len(self.head) + len(self.before)


Generator = Callable[[RulerSource, int, int], RulerSample]
GENERATORS: dict[str, Generator] = {}


def register(name: str):
    def add(fn: Generator) -> Generator:
        GENERATORS[name] = fn
        return fn

    return add


@dataclass(frozen=True)
class TaskInfo:
    module: str  # evalkit.data.ruler.<module> registers the generator
    metric: str  # "all": string match all (the fraction of references in the output); "part": any reference
    max_new_tokens: int  # RULER's tokens_to_generate


# RULER's 13 tasks (scripts/synthetic.yaml), in its order
TASKS: dict[str, TaskInfo] = {
    **{
        name: TaskInfo("niah", "all", 128)
        for name in (
            "niah_single_1",
            "niah_single_2",
            "niah_single_3",
            "niah_multikey_1",
            "niah_multikey_2",
            "niah_multikey_3",
            "niah_multivalue",
            "niah_multiquery",
        )
    },
    "vt": TaskInfo("vt", "all", 30),
    "cwe": TaskInfo("words", "all", 120),
    "fwe": TaskInfo("words", "all", 50),
    "qa_1": TaskInfo("qa", "part", 32),
    "qa_2": TaskInfo("qa", "part", 32),
}


class SkipTask(Exception):
    """Raised by a generator that cannot run with what it was given (QA without a local dataset file):
    the suite skips the task and says why in one line of its summary, never silently, never with fake data."""


def generator(name: str) -> Generator:
    importlib.import_module(f"evalkit.data.ruler.{TASKS[name].module}")
    return GENERATORS[name]
