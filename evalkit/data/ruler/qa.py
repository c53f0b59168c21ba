"""RULER's QA tasks: a question answered by its gold paragraph(s) hidden among distractor paragraphs.

As RULER's ``qa.py``: qa_1 reads SQuAD (v2 JSON: data -> paragraphs -> qas; unanswerable questions are
skipped), qa_2 HotpotQA (a list of {question, answer, context: [[title, sentences]], supporting_facts}).
Question ``index`` of the file is sample ``index`` (RULER's order), so every length asks the same
questions. The documents are the gold paragraph(s) first, then the question's own other paragraphs
(SQuAD: the rest of its article; HotpotQA: its distractor paragraphs), then random paragraphs of the
file, as many as fit, shuffled and laid out as RULER's ``Document N:`` blocks. Documents are not cut,
so a prompt is up to one document short of ``length``: ``prompt_tokens`` says how long it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

from evalkit.core.errors import ConfigError, DataError
from evalkit.data.haystack import _encode
from evalkit.data.ruler import PromptFrame, RulerSample, RulerSource, SkipTask, register

INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
BEFORE = f"{INSTRUCTION}\n\nThe following are given documents.\n\n"
AFTER = f"\n\n{INSTRUCTION}\n\nQuestion: {{query}}"
PREFIX = "Answer:"
FORMATS = {"qa_1": "squad", "qa_2": "hotpotqa"}


@dataclass(frozen=True)
class Question:
    id: str
    query: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # indices into the file's sorted, distinct documents
    own: tuple[int, ...]  # the question's other paragraphs, drawn before the rest of the file


@dataclass(frozen=True, eq=False)  # hashed by identity: _read returns one object per file version
class QAFile:
    path: str
    format: str  # "squad" | "hotpotqa"
    docs: tuple[str, ...]
    questions: tuple[Question, ...]


def _squad(data: dict, path: str) -> QAFile:
    docs = sorted({p["context"] for a in data["data"] for p in a["paragraphs"]})
    where = {d: i for i, d in enumerate(docs)}
    questions = []
    for article in data["data"]:
        article_docs = [where[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            doc = where[p["context"]]
            for q in p["qas"]:
                answers = tuple(dict.fromkeys(a["text"] for a in q.get("answers", []) if a["text"].strip()))
                if q.get("is_impossible") or not answers:
                    continue
                questions.append(
                    Question(
                        str(q.get("id", len(questions))),
                        q["question"],
                        answers,
                        (doc,),
                        tuple(d for d in dict.fromkeys(article_docs) if d != doc),
                    )
                )
    return QAFile(path, "squad", tuple(docs), tuple(questions))


def _hotpot_doc(title: str, sentences) -> str:
    return f"{title}\n{''.join(sentences)}"  # RULER's layout of a HotpotQA paragraph


def _hotpot(data: list, path: str) -> QAFile:
    docs = sorted({_hotpot_doc(t, s) for d in data for t, s in d["context"]})
    where = {d: i for i, d in enumerate(docs)}
    questions = []
    for n, d in enumerate(data):
        own = [where[_hotpot_doc(t, s)] for t, s in d["context"]]
        titles = {t for t, _ in d.get("supporting_facts", [])}
        gold = [
            where[_hotpot_doc(t, s)] for t, s in d["context"] if t in titles
        ] or own  # no supporting facts: all its paragraphs
        answer = str(d["answer"]).strip()
        if answer:
            questions.append(
                Question(
                    str(d.get("_id", n)),
                    d["question"],
                    (answer,),
                    tuple(dict.fromkeys(gold)),
                    tuple(i for i in dict.fromkeys(own) if i not in gold),
                )
            )
    return QAFile(path, "hotpotqa", tuple(docs), tuple(questions))


@lru_cache(maxsize=8)
def _read(path: str, stamp: tuple[int, int]) -> QAFile:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read QA file {path}: {e}", "give a SQuAD v2 or HotpotQA JSON file") from None
    try:
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            qa = _squad(data, path)
        elif (
            isinstance(data, list)
            and data
            and isinstance(data[0], dict)
            and {"question", "answer", "context"} <= data[0].keys()
        ):
            qa = _hotpot(data, path)
        else:
            raise DataError(
                f"QA file {path} is neither SQuAD (data -> paragraphs -> qas) nor HotpotQA "
                "(a list of question, answer, context)",
                "give a SQuAD v2 or HotpotQA JSON file",
            )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(
            f"QA file {path} is malformed ({type(e).__name__}: {e})",
            "give an unmodified SQuAD v2 or HotpotQA JSON file",
        ) from None
    if not qa.questions:
        raise DataError(
            f"QA file {path} has no answerable question", "give a SQuAD v2 or HotpotQA JSON file with answers"
        )
    return qa


def load(path: str) -> QAFile:
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(
            f"QA file {path} does not exist", "give the path of a local SQuAD v2 or HotpotQA JSON file"
        ) from None
    return _read(os.path.abspath(path), (st.st_mtime_ns, st.st_size))


def qa_file(source: RulerSource, task: str) -> QAFile:
    """The first of ``source.qa_files`` in the task's format; SkipTask when none is."""
    files = [load(p) for p in source.qa_files]
    for f in files:
        if f.format == FORMATS[task]:
            return f
    name = "SQuAD v2" if task == "qa_1" else "HotpotQA"
    raise SkipTask(f"{task} needs a local {name} JSON file: pass --qa-dataset FILE.json")


@lru_cache(maxsize=8)
def _doc_cache(tokenizer, qa: QAFile) -> dict:
    return {}  # doc index -> token ids, filled as documents are drawn, shared by the samples of one file


def _header(i: int) -> str:
    return (
        "\n\n" if i > 1 else ""
    ) + f"Document {i}:\n"  # RULER joins "Document {i}:\n{document}" blocks with blank lines


def build(source: RulerSource, length: int, index: int, task: str) -> RulerSample:
    qa, tok = qa_file(source, task), source.tokenizer
    rng = source.rng(task, length, index)
    q = qa.questions[index % len(qa.questions)]
    frame = PromptFrame.build(
        tok,
        source.chat,
        BEFORE,
        AFTER.format(query=q.query),
        PREFIX,
        answer=q.answers[0] if len(q.answers) == 1 else None,
    )
    budget, ids = frame.budget(length), _doc_cache(tok, qa)
    first = set(q.gold) | set(q.own)
    rest = (i for i in rng.permutation(len(qa.docs)).tolist() if i not in first)
    queue = [*q.gold, *(q.own[i] for i in rng.permutation(len(q.own)))]
    chosen, used = [], 0
    while True:
        doc = queue.pop(0) if queue else next(rest, None)
        if doc is None:
            break
        if doc not in ids:
            ids[doc] = _encode(tok, qa.docs[doc])
        cost = len(_encode(tok, _header(len(chosen) + 1))) + len(ids[doc])
        if used + cost > budget:
            break
        chosen.append(doc)
        used += cost
    if len(chosen) < len(q.gold):
        raise ConfigError(
            f"context length {length} is too short for {task}: question {q.id}'s gold paragraph(s) do not fit "
            f"in the {budget} tokens left",
            "use longer lengths",
        )
    order = [chosen[i] for i in rng.permutation(len(chosen))]
    context = [t for n, doc in enumerate(order, 1) for t in _encode(tok, _header(n)) + ids[doc]]
    prompt = frame.assemble(context)
    provenance = {
        "seed": source.seed,
        "file": qa.path,
        "format": qa.format,
        "question_index": index % len(qa.questions),
        "question_id": q.id,
        "gold_docs": list(q.gold),
        "docs": order,
        "docs_in_file": len(qa.docs),
        "short_by": length - len(prompt),
        "chat": source.chat,
    }
    return RulerSample(task, length, index, prompt, q.answers, frame.answer_ids, provenance)


@register("qa_1")
def build_qa_1(source: RulerSource, length: int, index: int) -> RulerSample:
    return build(source, length, index, "qa_1")


@register("qa_2")
def build_qa_2(source: RulerSource, length: int, index: int) -> RulerSample:
    return build(source, length, index, "qa_2")
