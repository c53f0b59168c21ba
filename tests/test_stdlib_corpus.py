"""builtin:python-stdlib (the interpreter's own standard library source) and windows inside documents."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.core.errors import DataError
from evalkit.data import stdlib
from evalkit.data.corpus import TokenStream, load_corpus
from evalkit.data.doc_windows import document_spans, eligible, inside_documents


def test_stdlib_corpus_is_sorted_non_test_source_with_its_version_and_file_list():
    corpus = load_corpus("builtin:python-stdlib")
    files = stdlib.stdlib_files()
    assert files == sorted(files) and len(corpus.documents) == len(files) > 300
    assert not any(
        "/test/" in f"/{f}" or f.rsplit("/", 1)[-1].startswith("test_") or "site-packages" in f for f in files
    )
    assert "typing.py" in files and "pydoc_data/topics.py" not in files
    assert corpus.documents[files.index("typing.py")] == (stdlib.stdlib_root() / "typing.py").read_text(
        encoding="utf-8"
    )
    assert (
        corpus.details["file_list_sha256"] == stdlib.file_list_hash(files) and corpus.details["python"] in corpus.recipe
    )
    assert load_corpus("builtin:python-stdlib").fingerprint == corpus.fingerprint  # deterministic
    assert load_corpus("builtin:pydoc-topics").name == load_corpus().name == "builtin:pydoc-topics"  # kept by name


def stream_of(sizes):
    """A joined stream: document d is ``sizes[d]`` tokens of value d, then a separator (-1)."""
    pieces = [np.append(np.full(n, d), -1) for d, n in enumerate(sizes)]
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    return TokenStream("synthetic", np.concatenate(pieces), starts)


def test_windows_stay_inside_one_document_without_overlap():
    stream = stream_of([50, 300, 99, 100, 1000, 10])
    assert document_spans(stream)[1].tolist() == [50, 300, 99, 100, 1000, 10]
    assert eligible(stream, 100)["disjoint_slots"] == 3 + 1 + 10
    for seed in range(20):
        windows = inside_documents(stream, 100, 14, seed)  # every slot: the windows tile what they can
        assert len(windows) == 14
        spans = sorted((o, o + 100) for _, o in windows)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # disjoint
        for doc, offset in windows:
            assert set(stream.tokens[offset : offset + 100].tolist()) == {doc}  # one document, no separator
    assert inside_documents(stream, 100, 5, 3) == inside_documents(stream, 100, 5, 3)
    assert inside_documents(stream, 100, 5, 3) != inside_documents(stream, 100, 5, 4)
    with pytest.raises(DataError, match="room for 14 disjoint"):
        inside_documents(stream, 100, 15, 0)


def test_every_placement_is_reachable():
    # one document of 250 tokens, two windows of 100: starts (a, b) with b >= a + 100, a >= 0, b <= 150
    stream = stream_of([250])
    seen = {tuple(o for _, o in inside_documents(stream, 100, 2, seed)) for seed in range(400)}
    assert all(b - a >= 100 and b <= 150 for a, b in seen) and len(seen) > 100
