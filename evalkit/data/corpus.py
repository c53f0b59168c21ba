"""Text sources, in one place for every task.

A corpus is an ordered list of documents (strings) with a stable name and fingerprint:
- ``builtin`` (``builtin:pydoc-topics``): the Python documentation topics that ship with Python
  itself (``pydoc_data.topics``: the language reference's prose, ~465k characters, about 113k
  SmolLM2 tokens, median document 393 tokens), so evalkit runs with no download;
- ``builtin:python-stdlib``: the interpreter's standard library source, long documents
  (``evalkit.data.stdlib``; perplexity's default);
- a local ``.txt`` / ``.jsonl`` / ``.parquet`` file, or a folder of them;
- a Hugging Face dataset by name or path, through ``datasets`` (``--split``).

``token_stream`` concatenates the documents' tokens with the tokenizer's separator (or, in
lm-eval's style, gives each document its own prefix token) and caches the result per
(tokenizer, corpus, style), since tokenizing 100k+ tokens costs seconds every run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evalkit.core.errors import DataError
from evalkit.core.paths import cache_dir

BUILTIN = "builtin"
PYDOC_TOPICS = "builtin:pydoc-topics"
PYTHON_STDLIB = "builtin:python-stdlib"
_FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Corpus:
    name: str
    fingerprint: str
    documents: tuple[str, ...]
    recipe: str = ""  # how the documents were read, in order: enough to rebuild them by hand
    details: dict = field(
        default_factory=dict
    )  # what else identifies the source (python-stdlib: version, file list hash)


@dataclass(frozen=True)
class TokenStream:
    """All documents' tokens back to back, joined as ``token_stream``'s style says."""

    corpus: str
    tokens: np.ndarray  # (N,) int64
    doc_starts: np.ndarray  # (D,) token offset of each document


def load_corpus(dataset: str | None = None, text_field: str = "text", split: str = "train") -> Corpus:
    if dataset is None or dataset in (BUILTIN, PYDOC_TOPICS):
        return _builtin_corpus()
    if dataset == PYTHON_STDLIB:
        from evalkit.data import stdlib

        docs, recipe, details = stdlib.read()
        fingerprint = _hash_texts(docs, details["python"], details["file_list_sha256"])
        return Corpus(name=PYTHON_STDLIB, fingerprint=fingerprint, documents=docs, recipe=recipe, details=details)
    path = Path(dataset).expanduser()
    if path.exists():
        return _local_corpus(path, text_field)
    if dataset.endswith(_FILE_SUFFIXES) or dataset.startswith((".", "/", "~")):
        raise DataError(f"dataset path {dataset} does not exist", "check the path given to --dataset")
    return _hf_corpus(dataset, text_field, split)


def _builtin_corpus() -> Corpus:
    from pydoc_data.topics import topics

    docs = tuple(topics[key].strip() for key in sorted(topics))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Corpus(
        name="builtin:pydoc-topics",
        fingerprint=_hash_texts(docs, version),
        documents=docs,
        recipe=f"pydoc_data.topics.topics of {version}: keys sorted, each text .strip()ed",
    )


def _local_corpus(path: Path, text_field: str) -> Corpus:
    files = sorted(p for p in path.rglob("*") if p.suffix in _FILE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(
            f"folder {path} holds no .txt, .jsonl or .parquet files",
            "point --dataset at a text file or a folder of them",
        )
    docs: list[str] = []
    for file in files:
        docs.extend(_read_file(file, text_field))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(
            f"{path} holds no text", f"check the files, or the field name given to --text-field (now {text_field!r})"
        )
    recipe = (
        "files sorted by path; a .txt file is one document, a .jsonl line or parquet row one record "
        f"(field {text_field!r}); text kept as is (a stray non-UTF-8 byte as U+FFFD), blank documents dropped"
    )
    return Corpus(name=str(path), fingerprint=_hash_texts(docs), documents=tuple(docs), recipe=recipe)


# Share of bytes that may fail UTF-8 decoding before a file counts as binary: a stray Latin-1 byte
# in a text file is replaced by U+FFFD; an image, archive or checkpoint fails in most of its bytes.
_MAX_INVALID_SHARE = 1e-3


def _read_text(file: Path) -> str:
    """A text file's content, or a DataError for a binary one (NUL bytes, or mostly not UTF-8)."""
    data = file.read_bytes()
    if b"\x00" in data:
        raise DataError(
            f"{file} is a binary file (it holds NUL bytes), not text",
            "give --dataset a UTF-8 text file (.txt, .jsonl) or a .parquet table",
        )
    text = data.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    if invalid > _MAX_INVALID_SHARE * max(len(data), 1):
        raise DataError(
            f"{file} is not UTF-8 text ({invalid} of {len(data)} bytes do not decode)",
            "convert it to UTF-8 (iconv -t utf-8), or give a .parquet table",
        )
    return text


def _read_file(file: Path, text_field: str) -> list[str]:
    if file.suffix == ".txt":
        return [_read_text(file)]
    if file.suffix == ".jsonl":
        docs = []
        for line_no, line in enumerate(_read_text(file).split("\n"), 1):  # not splitlines: JSON may hold U+2028
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{file} line {line_no} is not valid JSON", "fix or remove that line") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{file} line {line_no} has no field {text_field!r} (it has: {keys})",
                    "name the text field with --text-field",
                )
            docs.append(str(record[text_field]))
        return docs
    import pandas as pd

    try:
        frame = pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(
            f"cannot read {file} as parquet ({exc.__class__.__name__})", "check the file is a valid parquet table"
        ) from None
    if text_field not in frame.columns:
        raise DataError(
            f"{file} has no column {text_field!r} (it has: {', '.join(map(str, frame.columns))})",
            "name the text column with --text-field",
        )
    return [str(t) for t in frame[text_field].tolist()]


def _hf_corpus(name: str, text_field: str, split: str) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "the datasets library is not installed", "pip install datasets, or pass a local file to --dataset"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(
            f"cannot load dataset {name!r} split {split!r} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:160]})",
            "give a local .txt/.jsonl/.parquet path, or a dataset name that is cached or reachable",
        ) from None
    if text_field not in ds.column_names:
        raise DataError(
            f"dataset {name!r} has no column {text_field!r} (it has: {', '.join(ds.column_names)})",
            "name the text column with --text-field",
        )
    docs = tuple(str(t) for t in ds[text_field] if str(t).strip())
    fingerprint = getattr(ds, "_fingerprint", None) or _hash_texts(docs)
    return Corpus(
        name=f"{name}:{split}",
        fingerprint=str(fingerprint),
        documents=docs,
        recipe=f"datasets.load_dataset({name!r}, split={split!r}), column {text_field!r} in row order, blank rows "
        f"dropped",
    )


def _hash_texts(docs, *extra: str) -> str:
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode())
    for doc in docs:
        digest.update(doc.encode("utf-8", errors="replace"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what turns text into ids, by content: the whole tokenization pipeline (or the
    vocabulary when there is no fast backend), special tokens and chat template. Two checkpoint
    folders holding copies of one tokenizer agree. The one tokenizer identity evalkit uses: token
    stream caches, --resume and compare's pairing."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps(
        {"special": tokenizer.special_tokens_map, "chat_template": getattr(tokenizer, "chat_template", None)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((text + extra).encode()).hexdigest()[:16]


def separator_id(tokenizer) -> int:
    for attr in ("eos_token_id", "sep_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise DataError(
        "the tokenizer has no end-of-text, separator or padding token", "use a tokenizer that defines eos_token"
    )


JOINED = "joined"  # documents back to back, each followed by the tokenizer's separator
LM_EVAL = "lm-eval"  # each document on its own: [prefix token] + its tokens, as lm-eval's loglikelihood_rolling


def token_stream(corpus: Corpus, tokenizer, use_cache: bool = True, style: str = JOINED) -> TokenStream:
    """The corpus as one token array; cached per (tokenizer, corpus, style)."""
    key = f"{tokenizer_fingerprint(tokenizer)}-{corpus.fingerprint}" + ("" if style == JOINED else f"-{style}")
    path = cache_dir("tokens") / f"{key}.npz"
    if use_cache and path.exists():
        try:
            with np.load(path) as cached:
                return TokenStream(corpus.name, cached["tokens"], cached["doc_starts"])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt, never trusted
    if style == LM_EVAL:
        prefix = lm_eval_prefix_id(tokenizer)
        encoded = [[prefix] + _lm_eval_encode(tokenizer, doc, prefix) for doc in corpus.documents]
    else:
        sep = separator_id(tokenizer)
        encoded = [ids + [sep] for ids in tokenizer(list(corpus.documents), add_special_tokens=False)["input_ids"]]
    pieces, starts, offset = [], [], 0
    for ids in encoded:
        starts.append(offset)
        pieces.append(np.asarray(ids, dtype=np.int64))
        offset += len(ids)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    stream = TokenStream(corpus.name, tokens, np.asarray(starts, dtype=np.int64))
    if use_cache:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, tokens=stream.tokens, doc_starts=stream.doc_starts)
        tmp.replace(path)
    return stream


def lm_eval_prefix_id(tokenizer) -> int:
    """lm-eval's HFLM.prefix_token_id (no custom one given): BOS, else EOS."""
    for value in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise DataError(
        "the tokenizer has neither a BOS nor an EOS token for lm-eval's rolling windows",
        "use a tokenizer that defines one",
    )


def _lm_eval_encode(tokenizer, text: str, prefix: int) -> list[int]:
    # HFLM.tok_encode: the tokenizer's default special tokens, none when the text already starts with the prefix token
    special = not text.startswith(tokenizer.decode(prefix))
    return list(tokenizer.encode(text, add_special_tokens=special))


def stream_provenance(corpus: Corpus, stream: TokenStream, tokenizer, style: str = JOINED) -> dict:
    """How the token stream was built and its fingerprint: enough to rebuild and check it."""
    if style == LM_EVAL:
        prefix = lm_eval_prefix_id(tokenizer)
        joining = (
            f"each document alone: [{tokenizer.convert_ids_to_tokens(prefix)!r} (id {prefix})] + "
            "tokenizer.encode(text) with its default special tokens (as lm-eval's HFLM.tok_encode)"
        )
    else:
        sep = separator_id(tokenizer)
        joining = (
            f"tokenizer(text, add_special_tokens=False) per document, each followed by "
            f"{tokenizer.convert_ids_to_tokens(sep)!r} (id {sep}), all concatenated"
        )
    return {
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "documents": len(corpus.documents),
        "document_order": corpus.recipe,
        **({"source": corpus.details} if corpus.details else {}),
        "joining": joining,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokens": int(len(stream.tokens)),
        "tokens_sha256": token_hash(stream.tokens),
    }


def token_hash(tokens: np.ndarray) -> str:
    """sha256 of the token ids as little-endian int64: ``hashlib.sha256(np.asarray(ids, "<i8").tobytes())``."""
    return hashlib.sha256(np.asarray(tokens, dtype="<i8").tobytes()).hexdigest()
