"""Windows that stay inside one document, drawn without overlap.

A long-context window made of unrelated documents joined together says nothing about whether a
model uses text far back: the loss at position 4000 has nothing 4000 tokens back to use. So
perplexity draws each window inside one document long enough to hold it; ``--documents joined``
keeps the old stream of documents joined by end-of-text tokens.

Drawing, reproducible from the seed: a document of n tokens (its separator excluded) holds at most
floor(n / L) disjoint windows of L tokens. ``count`` of those slots are chosen at random among all
documents' slots (``numpy.random.default_rng([seed, L, 1])``, without replacement), then each
document's m windows are placed at random without overlap: m values u drawn uniformly from
0..n - m L, sorted, window i starting at u_i + i L. Every placement of m disjoint windows is possible.
(Kept apart from ``windows.py``, which draws windows anywhere in the stream.)
"""

from __future__ import annotations

import numpy as np

from evalkit.core.errors import DataError
from evalkit.data.corpus import TokenStream
from evalkit.data.windows import check_fits


def document_spans(stream: TokenStream) -> tuple[np.ndarray, np.ndarray]:
    """(start, tokens) of each document in a joined stream, its trailing separator excluded."""
    ends = np.append(stream.doc_starts[1:], len(stream.tokens))
    return stream.doc_starts, ends - stream.doc_starts - 1


def inside_documents(stream: TokenStream, length: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` disjoint windows of ``length`` tokens, each inside one document: (document, stream offset),
    sorted by offset."""
    check_fits(stream, length)  # the whole corpus too short: the message every window mode gives
    starts, sizes = document_spans(stream)
    slots = np.maximum(sizes // length, 0)  # (D,) disjoint windows each document can hold
    total = int(slots.sum())
    if total < count:
        long_enough = int((sizes >= length).sum())
        raise DataError(
            f"corpus {stream.corpus} has {long_enough} document(s) of at least {length} tokens, room for {total} "
            f"disjoint window(s) inside documents, fewer than the {count} asked",
            "ask fewer --samples or shorter --lengths, give a corpus of longer documents, or pass --documents joined",
        )
    rng = np.random.default_rng([seed, length, 1])
    owner = np.repeat(np.arange(len(slots)), slots)  # (total,) the document of each slot
    per_doc = np.bincount(owner[rng.choice(total, size=count, replace=False)], minlength=len(slots))
    out = []
    for doc in np.flatnonzero(per_doc):
        m = int(per_doc[doc])
        free = int(sizes[doc]) - m * length
        u = np.sort(rng.integers(0, free + 1, size=m))
        out += [(int(doc), int(starts[doc] + u[i] + i * length)) for i in range(m)]
    return sorted(out, key=lambda w: w[1])


def eligible(stream: TokenStream, length: int) -> dict:
    """What the manifest records about the documents a window of ``length`` can sit in."""
    _, sizes = document_spans(stream)
    long_enough = sizes >= length
    return {
        "documents_long_enough": int(long_enough.sum()),
        "documents_total": int(len(sizes)),
        "tokens_in_them": int(sizes[long_enough].sum()),
        "disjoint_slots": int((sizes // length).sum()),
    }
