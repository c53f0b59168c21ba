"""Runner batching and out-of-memory backoff; corpus sources."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evalkit.attention import AttentionSpec, RunVariant
from evalkit.core.backend import Backend, Capabilities
from evalkit.core.errors import DataError, EvalkitError
from evalkit.core.requests import TokenLossRequest
from evalkit.core.task import Sample, Task
from evalkit.data.corpus import load_corpus, token_stream
from evalkit.run.runner import Runner
from evalkit.store.results import RunStore


class FakeAdapter(Backend):
    """Answers like a model whose memory holds ``fits`` sequences at once."""

    name = "fake"

    @classmethod
    def declared(cls):
        return Capabilities(requests=frozenset({"token_loss"}))

    def activate(self, variant):
        pass

    def __init__(self, fits: int):
        self.fits, self.batches, self.model, self.device = fits, [], None, "cpu"

    def answer(self, requests):
        if len(requests) > self.fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(len(requests))
        return [r.tokens[1:].astype(float) for r in requests]


SOFTMAX = RunVariant("softmax", AttentionSpec("softmax"))


class EchoTask(Task):
    name, key_columns = "echo", ()

    def rows(self, sample, answer):
        return [{**sample.keys, "metric": "sum", "value": float(answer.sum())}]


def samples(count, length):
    return [Sample(f"s{k}", TokenLossRequest(np.arange(length) + k), {"context_length": length}) for k in range(count)]


def test_out_of_memory_halves_the_batch_and_finishes(tmp_path):
    adapter = FakeAdapter(fits=3)
    store = RunStore(tmp_path / "run", {}, resume=False)
    Runner(adapter, store, batch_tokens=16 * 8, progress=None).run(EchoTask(None, None), samples(10, 8), [SOFTMAX])
    assert adapter.batches == [2, 2, 2, 2, 2]  # 16 -> 8 -> 4 -> 2, which fits; then the same size on
    assert store.finished == 10


def test_a_single_sequence_that_does_not_fit_is_a_clear_error(tmp_path):
    store = RunStore(tmp_path / "run", {}, resume=False)
    with pytest.raises(EvalkitError, match="does not fit.*--lengths"):
        Runner(FakeAdapter(fits=0), store, 64, None).run(EchoTask(None, None), samples(2, 8), [SOFTMAX])


def test_buckets_group_equal_lengths_longest_first(tmp_path):
    adapter = FakeAdapter(fits=100)
    store = RunStore(tmp_path / "run", {}, resume=False)
    mixed = samples(3, 8) + [Sample(f"t{k}", TokenLossRequest(np.arange(16)), {"context_length": 16}) for k in range(2)]
    Runner(adapter, store, 1000, None).run(EchoTask(None, None), mixed, [SOFTMAX])
    assert adapter.batches == [2, 3]


def test_local_corpus_formats(tmp_path, tokenizer):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("First book. " * 50)
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"body": f"Record {k}. " * 20}) for k in range(3)) + "\n")
    pd.DataFrame({"body": ["Parquet row one.", "Parquet row two."]}).to_parquet(folder / "c.parquet")
    corpus = load_corpus(str(folder), text_field="body")
    assert len(corpus.documents) == 1 + 3 + 2 and corpus.documents[-1] == "Parquet row two."
    stream = token_stream(corpus, tokenizer)
    assert len(stream.doc_starts) == 6 and (np.diff(stream.doc_starts) > 0).all()
    sep = tokenizer.eos_token_id
    assert stream.tokens[stream.doc_starts[1] - 1] == sep  # documents are joined by the end-of-text token
    assert token_stream(corpus, tokenizer).tokens.tolist() == stream.tokens.tolist()  # the cached copy is the same


def test_builtin_corpus_and_bad_sources(tmp_path):
    corpus = load_corpus()
    assert corpus.name == "builtin:pydoc-topics" and len(corpus.documents) > 50
    assert sum(len(d) for d in corpus.documents) > 400_000
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match="line 2"):
        load_corpus(str(bad))
    with pytest.raises(DataError, match="cannot load dataset"):
        load_corpus("no-such-org/no-such-dataset")


def test_a_backend_that_batches_itself_gets_lists_of_one_kind_longest_first():
    """Continuous batching gets whole lists, in chunks small enough that progress moves and an
    interrupt loses one chunk at most (LISTED_CHUNK), each of one request kind, longest first."""
    from evalkit.core.requests import GenerateRequest
    from evalkit.run.runner import LISTED_CHUNK

    rng = np.random.default_rng(0)
    samples = [
        Sample(f"l{i}", TokenLossRequest(np.zeros(int(n), dtype=np.int64)), {})
        for i, n in enumerate(rng.integers(2, 500, 150))
    ] + [Sample(f"g{i}", GenerateRequest(np.zeros(int(n), dtype=np.int64), 4), {}) for i, n in enumerate([9, 30, 7])]
    chunks = Runner._chunks(None, samples)
    assert sorted(s.id for chunk in chunks for s in chunk) == sorted(s.id for s in samples)
    assert all(0 < len(chunk) <= LISTED_CHUNK and len({type(s.request) for s in chunk}) == 1 for chunk in chunks)
    losses = [s.request.length for chunk in chunks for s in chunk if isinstance(s.request, TokenLossRequest)]
    assert losses == sorted(losses, reverse=True) and len(chunks) == 4  # 150 losses in 3 chunks, one generation
