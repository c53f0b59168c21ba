"""Long-context perplexity: loss as a function of token position, at each context length.

Each window of exactly L tokens runs in one forward pass from position 0 (no sliding window:
the point is how the loss behaves deep into the context). Per-position NLL is averaged into
position bins. ``--stride`` gives the classic sliding-window perplexity instead (every token
scored once), and ``--match lm-eval`` lm-eval's ``loglikelihood_rolling`` windows, document by
document, with its word and byte perplexities.

Random windows of every length start at the same offsets. Under a causal model the loss at
position p depends only on tokens 0..p, so by default (``--windows nested``) one pass of the
longest length per offset gives every shorter length's rows: its first L positions are the window
of L. Where that is not exact (``TaskContext.prefix_limits``) each length runs its own pass.

Windows stay inside one document of the default long-document corpus (``builtin:python-stdlib``;
``evalkit.data.doc_windows``), drawn without overlap; ``--documents joined`` draws them anywhere in
the documents joined by end-of-text tokens. ``--metric longppl`` adds LongPPL (``evalkit.report.longppl``):
short-context passes (only under the evaluator: the run's first variant, or ``--evaluator``) give each
token's long-short difference, and every variant is scored on the key tokens chosen once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from evalkit.core.errors import ConfigError
from evalkit.core.grid import parse_length, parse_lengths
from evalkit.core.requests import TokenLossRequest
from evalkit.core.task import Sample, Task, option
from evalkit.data.corpus import (
    JOINED,
    LM_EVAL,
    PYDOC_TOPICS,
    PYTHON_STDLIB,
    load_corpus,
    stream_provenance,
    token_stream,
)
from evalkit.data.options import CorpusOptions
from evalkit.data.windows import document_windows, effective_stride, random_offsets, strided_windows
from evalkit.report import longppl, stats

LINEAR_BINS = 32


@dataclass(frozen=True)
class PerplexityOptions(CorpusOptions):
    lengths: str = option("1k,2k,4k,8k", "Context lengths: 1k,2k,8k or 1k..32k (doubling); k = 1024 tokens.", grid=True)
    samples: int | None = option(
        None,
        "Windows per length (default 4); with --stride, a cap on the number of windows, with --match lm-eval on "
        "the number of documents (default: the whole corpus).",
        grid=True,
    )
    stride: int | None = option(
        None,
        "Sliding-window mode: windows of L tokens every STRIDE tokens (at most L - 1), each token after the first "
        "scored exactly once.",
    )
    match: str = option(
        "none",
        "lm-eval: lm-eval's loglikelihood_rolling windows (each document alone after a BOS/EOS prefix, L tokens "
        "in, stride L) and its word/byte perplexity.",
        choices=("none", "lm-eval"),
    )
    windows: str = option(
        "nested",
        "Random windows: nested (one pass of the longest length per offset gives every length's rows; exact under "
        "causal attention, else independent by itself) or independent (one pass per length and offset).",
        choices=("nested", "independent"),
    )
    bins: str = option(
        "log",
        "Position bins for the per-position loss: log (powers of two) or linear (32 equal bins).",
        choices=("log", "linear"),
    )
    dataset: str | None = option(
        None,
        "Text source: builtin:python-stdlib (the interpreter's standard library source: long documents), "
        "builtin:pydoc-topics (Python's documentation topics: short ones), a .txt/.jsonl/.parquet file or folder, "
        "or a Hugging Face dataset name. Default: builtin:python-stdlib; with --stride or --match lm-eval, which "
        "score every token of the corpus, builtin:pydoc-topics (113k SmolLM2 tokens, not 3.3M).",
    )
    documents: str = option(
        "inside",
        "Random windows: inside (each window inside one document long enough to hold it, windows disjoint; shorter "
        "documents are skipped) or joined (anywhere in the documents joined by end-of-text tokens).",
        choices=("inside", "joined"),
    )
    metric: str = option(
        "perplexity",
        "longppl: also LongPPL (Fang et al. 2025), perplexity over the key tokens whose loss depends on the long "
        "context, beside perplexity.",
        choices=("perplexity", "longppl"),
    )
    lsd_threshold: float = option(
        longppl.LSD_THRESHOLD,
        "LongPPL: a key token's long-short difference, loss(short context) - loss(full), must exceed this (nats).",
    )
    loss_threshold: float = option(
        longppl.LOSS_THRESHOLD, "LongPPL: a key token's full-context loss must be below this (nats)."
    )
    short_context: str = option(
        "4k",
        "LongPPL: the short context: each token is rescored with between SHORT and SHORT + STRIDE - 1 tokens "
        "before it; positions below SHORT + STRIDE are never key (below SHORT + STRIDE the short window is the "
        "full window's own prefix).",
    )
    short_stride: str = option("1k", "LongPPL: stride of the short-context windows (tokens sharing one short window).")
    evaluator: str | None = option(
        None,
        "LongPPL: the model that chooses the key tokens (a local checkpoint with the same tokenizer); default: the "
        "model itself under its first --attention variant.",
    )

    def resolved_dataset(self) -> str:
        """The corpus read: ``dataset``, else the default of the window mode."""
        if self.dataset:
            return self.dataset
        return PYDOC_TOPICS if self.stride is not None or self.match == "lm-eval" else PYTHON_STDLIB


def bin_edges(length: int, kind: str) -> np.ndarray:
    """Edges over target positions 1..length-1 (position p is predicted from tokens 0..p-1)."""
    if kind == "log":
        edges = [1]
        while edges[-1] * 2 < length:
            edges.append(edges[-1] * 2)
        return np.array(edges + [length])
    return np.unique(np.linspace(1, length, LINEAR_BINS + 1).round().astype(int))


class PerplexityTask(Task):
    name = "perplexity"
    description = "Loss vs token position and perplexity at each context length (or classic sliding-window perplexity)."
    Options = PerplexityOptions
    key_columns = ("sample", "position_bin")  # + "position" with --metric longppl (one row per candidate token)

    @classmethod
    def request_kinds(cls, options) -> frozenset[str]:
        return frozenset({"token_loss"})

    @classmethod
    def unit_columns(cls, options) -> tuple[str, ...]:
        """A window: its positions (bins, LongPPL's tokens) share text; under --match lm-eval a document,
        whose windows share its text (so compare and gate count the units summary.csv counts)."""
        if options.match == "lm-eval":
            return ("context_length", "document")
        return ("context_length", "sample")

    def __init__(self, options: PerplexityOptions, context):
        super().__init__(options, context)
        if options.bins not in ("log", "linear"):
            raise ConfigError(f"bad --bins {options.bins!r}", "use log or linear")
        if options.stride is not None and options.stride < 1:
            raise ConfigError(f"bad --stride {options.stride}", "give a positive number of tokens")
        if options.samples is not None and options.samples < 1:
            raise ConfigError(f"bad --samples {options.samples}", "give at least 1")
        if options.match == "lm-eval" and options.stride is not None:
            raise ConfigError(
                "--stride and --match lm-eval both set the windows", "drop --stride: lm-eval's stride is the length"
            )
        self.lengths = parse_lengths(options.lengths)
        self.stream_info: dict = {}
        self.windows = self._window_mode()
        self.short = self._short_context()
        if self.short:
            self.key_columns = (*type(self).key_columns, "position")
        self.evaluator_frame = None  # an --evaluator's token rows, set by the run before the rows are derived

    def _short_context(self) -> tuple[int, int] | None:
        if self.options.metric != "longppl":
            if self.options.evaluator:
                raise ConfigError(
                    "--evaluator chooses LongPPL's key tokens", "add --metric longppl, or drop --evaluator"
                )
            return None
        if self.options.stride or self.options.match == "lm-eval":
            raise ConfigError("--metric longppl scores random windows", "drop --stride / --match lm-eval")
        short, stride = parse_length(self.options.short_context), parse_length(self.options.short_stride)
        return short, stride

    def _window_mode(self) -> dict:
        """Nested passes where they give exactly the rows of separate ones; the manifest records why not."""
        longest = max(self.lengths)
        why = [
            "--stride has its own windows"
            if self.options.stride
            else "--match lm-eval has its own windows"
            if self.options.match == "lm-eval"
            else None
        ]
        why += [reason for limit, reason in self.context.prefix_limits if longest > limit]
        why = [w for w in why if w]
        used = "nested" if self.options.windows == "nested" and not why else "independent"
        # what makes the units independent (random_offsets draws disjoint windows)
        overlap = (
            "none: random windows share no token"
            if not (self.options.stride or self.options.match == "lm-eval")
            else "context only: each token is scored in one window"
        )
        return {
            "requested": self.options.windows,
            "used": used,
            **({"why": "; ".join(why)} if why else {}),
            "overlap": overlap,
        }

    def samples(self) -> list[Sample]:
        corpus = load_corpus(self.options.resolved_dataset(), self.options.text_field, self.options.split)
        style = LM_EVAL if self.options.match == "lm-eval" else JOINED
        stream = token_stream(corpus, self.context.tokenizer, style=style)
        self.stream_info = stream_provenance(corpus, stream, self.context.tokenizer, style)
        if style == JOINED and not self.options.stride:
            from evalkit.data.doc_windows import eligible

            self.stream_info["windows"] = {
                "documents": self.options.documents,
                **(eligible(stream, max(self.lengths)) if self.options.documents == "inside" else {}),
            }
        if style == LM_EVAL:
            return [s for length in self.lengths for s in self._lm_eval_samples(corpus, stream, length)]
        if not self.options.stride:
            return self._random_samples(stream)
        out = []
        for length in self.lengths:
            stride = effective_stride(length, self.options.stride)
            windows = strided_windows(stream, length, stride)
            assert sum(length - first for _, first in windows) == len(stream.tokens) - 1  # each token once
            for k, (begin, first) in enumerate(windows[: self.options.samples]):
                tokens = stream.tokens[begin : begin + length]
                out.append(
                    Sample(
                        f"L{length}-s{stride}-w{k}",
                        TokenLossRequest(tokens),
                        {"context_length": length, "sample": k},
                        {
                            "source": stream.corpus,
                            "offset": begin,
                            "scored_from": first,
                            "stride": stride,
                            "stream_tokens": len(stream.tokens),
                        },
                    )
                )
        return out

    def _random_samples(self, stream) -> list[Sample]:
        """Window k of every length starts at offset o_k (drawn so the longest fits): one Sample per
        offset holding the longest window when nested, else one per length and offset."""
        from evalkit.data.doc_windows import inside_documents

        longest, count = max(self.lengths), self.options.samples or 4
        if self.options.documents == "inside":
            drawn = inside_documents(stream, longest, count, self.context.seed)
        else:
            drawn = [(None, o) for o in random_offsets(stream, longest, count, self.context.seed)]
        nested = self.windows["used"] == "nested"
        out = []
        for length in [longest] if nested else self.lengths:
            for k, (doc, begin) in enumerate(drawn):
                meta = {
                    "source": stream.corpus,
                    "offset": begin,
                    "pass_length": length,
                    **({"document": doc} if doc is not None else {}),
                }
                out.append(
                    Sample(
                        f"{'nested-' if nested else ''}L{length}-w{k}",
                        TokenLossRequest(stream.tokens[begin : begin + length]),
                        {"context_length": length, "sample": k},
                        meta,
                    )
                )
                if self.short and not self.options.evaluator:  # an --evaluator's run scores the short contexts
                    out += self._short_samples(stream, length, k, meta)
        return out

    def _short_samples(self, stream, length: int, k: int, meta: dict) -> list[Sample]:
        """The evaluator's short-context passes over window k (``longppl.short_windows``), first variant only."""
        begin = meta["offset"]
        return [
            Sample(
                f"short-L{length}-w{k}-b{start}",
                TokenLossRequest(stream.tokens[begin + start : begin + end]),
                {"context_length": length, "sample": k},
                {**meta, "short_start": start, "scored_from": first},
                first_variant_only=True,
            )
            for start, end, first in longppl.short_windows(length, *self.short)
        ]

    def _lm_eval_samples(self, corpus, stream, length: int) -> list[Sample]:
        """lm-eval's windows of ``length`` model inputs (``length + 1`` tokens with the last target)."""
        out = []
        for k, (doc, begin, size, first) in enumerate(document_windows(stream, length)):
            if self.options.samples is not None and doc >= self.options.samples:  # lm-eval's --limit: whole documents
                break
            text = corpus.documents[doc]
            out.append(
                Sample(
                    f"L{length}-lmeval-w{k}",
                    TokenLossRequest(stream.tokens[begin : begin + size]),
                    {"context_length": length, "sample": k},
                    {
                        "source": stream.corpus,
                        "document": doc,
                        "offset": begin,
                        "scored_from": first,
                        # lm-eval's PerplexityTask.count_words / count_bytes of the document
                        "doc_words": len(re.split(r"\s+", text)),
                        "doc_bytes": len(text.encode("utf-8")),
                    },
                )
            )
        return out

    def export_records(self) -> list[dict]:
        """Every window's tokens (each length at each offset), however the run grouped its passes."""
        from evalkit.store.records import decode_text, token_records

        records = [
            r for r in token_records(self) if "short_start" not in r
        ]  # LongPPL's short passes: spans of a window
        if self.windows["used"] != "nested":
            return records
        return [
            {
                **record,
                "id": f"L{length}-w{record['sample']}",
                "context_length": length,
                "token_ids": record["token_ids"][:length],
                "text": decode_text(self.context.tokenizer, record["token_ids"][:length]),
            }
            for length in self.lengths
            for record in records
        ]

    def provenance(self) -> dict:
        out = {"token_stream": self.stream_info, "windows": self.windows}
        if self.short:
            short, stride = self.short
            longest = max(self.lengths)
            out["longppl"] = {
                "lsd_threshold": self.options.lsd_threshold,
                "loss_threshold": self.options.loss_threshold,
                "short_context": short,
                "short_stride": stride,
                "evaluator": self.options.evaluator or "the model itself, under the first --attention variant",
                "short_tokens_per_window": longppl.short_context_tokens(longest, short, stride),
                "full_tokens_per_window": longest,
            }
        return out

    def derive(self, frame):
        """LongPPL's key status and key-token rows (``longppl.derive``), from the evaluator's token rows."""
        return longppl.derive(frame, self.evaluator_frame, self.options) if self.short else frame

    def rows(self, sample: Sample, answer: np.ndarray) -> list[dict]:
        keys, meta = sample.keys, {**sample.meta, "seed": self.context.seed}
        if "short_start" in meta:
            return self._token_rows(sample, answer, "short_nll", meta["short_start"], meta["scored_from"])
        if "scored_from" in meta:
            scored = answer[meta["scored_from"] - 1 :]  # answer[j] is the NLL of position j + 1
            total = float(scored.astype(np.float64).sum())
            return [
                {**keys, "metric": "mean_nll", "value": total / scored.size, **meta},
                {**keys, "metric": "sum_nll", "value": total, **meta},
                {**keys, "metric": "scored_tokens", "value": float(scored.size), **meta},
            ]
        rows = []
        nested = [n for n in self.lengths if n <= sample.request.length] if self.windows["used"] == "nested" else []
        for length in nested or [sample.request.length]:
            # answer[j] is the NLL of position j + 1, which depends on tokens 0..j + 1 only: the
            # window of ``length`` at the same offset has answer[: length - 1]
            rows += self._window_rows({**keys, "context_length": length}, meta, answer[: length - 1], length)
        if self.short:
            rows += self._token_rows(sample, answer, "token_nll", 0, self.short[0])
        return rows

    def _token_rows(self, sample: Sample, answer: np.ndarray, metric: str, start: int, first: int) -> list[dict]:
        """One row per position p >= ``first`` (LongPPL's candidates) of each nested length the pass serves:
        the pass starts at window position ``start``, so answer[p - start - 1] is position p's NLL."""
        length = sample.keys["context_length"]
        nested = [n for n in self.lengths if n <= length] if self.windows["used"] == "nested" else [length]
        meta = {k: v for k, v in sample.meta.items() if k not in ("scored_from", "pass_length")}
        end = start + len(answer) + 1
        return [
            {
                **sample.keys,
                "context_length": n,
                "position": p,
                "metric": metric,
                "value": float(answer[p - start - 1]),
                **meta,
                "seed": self.context.seed,
            }
            for n in nested
            for p in range(first, min(end, n))
        ]

    def _window_rows(self, keys: dict, meta: dict, answer: np.ndarray, length: int) -> list[dict]:
        edges = bin_edges(length, self.options.bins)
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            rows.append(
                {
                    **keys,
                    "position_bin": int(lo),
                    "metric": "nll",
                    "value": float(answer[lo - 1 : hi - 1].mean()),
                    "position_end": int(hi),
                    **meta,
                }
            )
        mean = float(answer.mean())
        rows.append({**keys, "metric": "mean_nll", "value": mean, **meta})
        rows.append({**keys, "metric": "perplexity", "value": math.exp(mean), **meta})
        return rows

    def summarize(self, frame):
        """Per variant and length: mean NLL with its t interval over windows (the unit: a window's
        positions share text), perplexity as exp of it and of its interval, and the last bin's NLL."""
        import pandas as pd

        units = self.unit_columns(self.options)
        groups = []
        order = {name: k for k, name in enumerate(pd.unique(frame["attention"]))}  # variants in run order
        for (attention, length), part in sorted(
            frame.groupby(["attention", "context_length"]), key=lambda item: (order[item[0][0]], item[0][1])
        ):
            means = part[part.metric == "mean_nll"]
            keys = stats.unit_keys(means, units)
            extra = {}
            if "scored_from" in part.columns and part["scored_from"].notna().any():  # --stride or --match lm-eval
                counts = part[part.metric == "scored_tokens"].set_index("sample")["value"]
                weights = counts.reindex(means["sample"]).to_numpy()
                nll = stats.weighted_mean(means["value"], weights, keys)  # = the NLL sum over the tokens scored
                nll_sum = float(part.loc[part.metric == "sum_nll", "value"].sum())
                tokens = int(weights.sum())
                extra = {"nll_sum": nll_sum}
                if self.options.match == "lm-eval":
                    docs = part[part.metric == "sum_nll"].drop_duplicates("document")
                    words, size = int(docs.doc_words.sum()), int(docs.doc_bytes.sum())
                    # lm-eval's weighted_perplexity and bits_per_byte aggregations over the scored documents;
                    # words and bytes are fixed counts, so each interval is the NLL interval rescaled
                    per_word, per_byte = tokens / words, tokens / size
                    extra.update({"documents": len(docs), "words": words, "bytes": size})
                    for name, scale, through in (
                        ("word_perplexity", per_word, math.exp),
                        ("byte_perplexity", per_byte, math.exp),
                        ("bits_per_byte", per_byte / math.log(2), float),
                    ):
                        extra.update(
                            {
                                name: through(nll.value * scale),
                                f"{name}_ci_low": through(nll.ci_low * scale),
                                f"{name}_ci_high": through(nll.ci_high * scale),
                            }
                        )
                else:
                    extra["stream_tokens"] = int(
                        part["stream_tokens"].max()
                    )  # tokens == stream_tokens - 1 when uncapped
            else:
                nll = stats.mean(means["value"], keys)
                tokens = int(len(means) * (length - 1))  # every window scores its positions 1..L-1
            nll = stats.clipped(nll, 0.0, math.inf)  # a t interval over few windows can pass 0; an NLL cannot
            row = {
                "attention": attention,
                "context_length": int(length),
                "n": nll.n,
                "units": nll.units,
                "tokens": tokens,
                **stats.columns(nll, "mean_nll"),
                **stats.columns(nll.exp(), "perplexity"),
                **extra,
            }
            bins = part[part.metric == "nll"]
            if not bins.empty:
                last = bins[bins.position_bin == bins.position_bin.max()]
                last_nll = stats.mean(last["value"], stats.unit_keys(last, units))
                row.update(stats.columns(stats.clipped(last_nll, 0.0, math.inf), "nll_last_bin"))
                row["last_bin"] = f"{int(last.position_bin.iloc[0])}-{int(last.position_end.iloc[0]) - 1}"
            if self.short:
                row.update(longppl.summary_columns(part, int(length), units))
            groups.append(row)
        return pd.DataFrame(groups)

    def plot(self, frame, title, plots_dir):
        from tasks.perplexity_plots import loss_vs_position, perplexity_vs_length

        train = self.context.marked_length
        written = []
        bins = frame[frame.metric == "nll"]
        if not bins.empty:
            written.append(
                loss_vs_position(
                    bins, self.unit_columns(self.options), title, train, plots_dir / "loss_vs_position.png"
                )
            )
        summary = self.summarize(frame)
        if not summary.empty:
            mode = (
                "sliding window"
                if self.options.stride
                else "lm-eval rolling windows"
                if self.options.match == "lm-eval"
                else ""
            )
            written.append(perplexity_vs_length(summary, mode, title, train, plots_dir / "perplexity_vs_length.png"))
            if self.short:
                from tasks.perplexity_plots import longppl_vs_length

                written.append(
                    longppl_vs_length(summary, self.short, title, train, plots_dir / "longppl_vs_length.png")
                )
        return written
