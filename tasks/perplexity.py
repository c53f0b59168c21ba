"""Long-context perplexity: loss as a function of token position, at each context length.

Each window of exactly L tokens runs in one forward pass from position 0 (no sliding window:
the point is how the loss behaves deep into the context). Per-position NLL is averaged into
position bins. ``--stride`` gives the classic sliding-window perplexity instead (every token
scored once), and ``--match lm-eval`` lm-eval's ``loglikelihood_rolling`` windows, document by
document, with its word and byte perplexities.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from evalkit.data.corpus import JOINED, LM_EVAL, load_corpus, stream_provenance, token_stream
from evalkit.data.options import CorpusOptions
from evalkit.data.windows import document_windows, effective_stride, random_offsets, strided_windows
from evalkit.errors import ConfigError
from evalkit.grid import format_length, parse_lengths
from evalkit.models.requests import TokenLossRequest
from evalkit.task import Sample, Task, option

LINEAR_BINS = 32


@dataclass(frozen=True)
class PerplexityOptions(CorpusOptions):
    lengths: str = option("1k,2k,4k,8k", "Context lengths: 1k,2k,8k or 1k..32k (doubling); k = 1024 tokens.", grid=True)
    samples: int | None = option(None, "Windows per length (default 4); with --stride, a cap on the number of windows, with --match lm-eval on the number of documents (default: the whole corpus).", grid=True)
    stride: int | None = option(None, "Sliding-window mode: windows of L tokens every STRIDE tokens (at most L - 1), each token after the first scored exactly once.")
    match: str = option("none", "lm-eval: lm-eval's loglikelihood_rolling windows (each document alone after a BOS/EOS prefix, L tokens in, stride L) and its word/byte perplexity.", choices=("none", "lm-eval"))
    bins: str = option("log", "Position bins for the per-position loss: log (powers of two) or linear (32 equal bins).", choices=("log", "linear"))


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
    key_columns = ("sample", "position_bin")

    def __init__(self, options: PerplexityOptions, context):
        super().__init__(options, context)
        if options.bins not in ("log", "linear"):
            raise ConfigError(f"bad --bins {options.bins!r}", "use log or linear")
        if options.stride is not None and options.stride < 1:
            raise ConfigError(f"bad --stride {options.stride}", "give a positive number of tokens")
        if options.samples is not None and options.samples < 1:
            raise ConfigError(f"bad --samples {options.samples}", "give at least 1")
        if options.match == "lm-eval" and options.stride is not None:
            raise ConfigError("--stride and --match lm-eval both set the windows", "drop --stride: lm-eval's stride is the length")
        self.lengths = parse_lengths(options.lengths)
        self.stream_info: dict = {}

    def samples(self) -> list[Sample]:
        corpus = load_corpus(self.options.dataset, self.options.text_field, self.options.split)
        style = LM_EVAL if self.options.match == "lm-eval" else JOINED
        stream = token_stream(corpus, self.context.tokenizer, style=style)
        self.stream_info = stream_provenance(corpus, stream, self.context.tokenizer, style)
        if style == LM_EVAL:
            return [s for length in self.lengths for s in self._lm_eval_samples(corpus, stream, length)]
        out = []
        for length in self.lengths:
            if self.options.stride:
                stride = effective_stride(length, self.options.stride)
                windows = strided_windows(stream, length, stride)
                assert sum(length - first for _, first in windows) == len(stream.tokens) - 1  # each token once
                for k, (begin, first) in enumerate(windows[: self.options.samples]):
                    tokens = stream.tokens[begin : begin + length]
                    out.append(Sample(f"L{length}-s{stride}-w{k}", TokenLossRequest(tokens),
                                      {"context_length": length, "sample": k},
                                      {"source": stream.corpus, "offset": begin, "scored_from": first,
                                       "stride": stride, "stream_tokens": len(stream.tokens)}))
            else:
                for k, begin in enumerate(random_offsets(stream, length, self.options.samples or 4, self.context.seed)):
                    tokens = stream.tokens[begin : begin + length]
                    out.append(Sample(f"L{length}-w{k}", TokenLossRequest(tokens),
                                      {"context_length": length, "sample": k},
                                      {"source": stream.corpus, "offset": begin}))
        return out

    def _lm_eval_samples(self, corpus, stream, length: int) -> list[Sample]:
        """lm-eval's windows of ``length`` model inputs (``length + 1`` tokens with the last target)."""
        out = []
        for k, (doc, begin, size, first) in enumerate(document_windows(stream, length)):
            if self.options.samples is not None and doc >= self.options.samples:  # lm-eval's --limit: whole documents
                break
            text = corpus.documents[doc]
            out.append(Sample(f"L{length}-lmeval-w{k}", TokenLossRequest(stream.tokens[begin : begin + size]),
                              {"context_length": length, "sample": k},
                              {"source": stream.corpus, "document": doc, "offset": begin, "scored_from": first,
                               # lm-eval's PerplexityTask.count_words / count_bytes of the document
                               "doc_words": len(re.split(r"\s+", text)), "doc_bytes": len(text.encode("utf-8"))}))
        return out

    def provenance(self) -> dict:
        return {"token_stream": self.stream_info}

    def rows(self, sample: Sample, answer: np.ndarray) -> list[dict]:
        keys, meta = sample.keys, sample.meta
        if "scored_from" in meta:
            scored = answer[meta["scored_from"] - 1 :]  # answer[j] is the NLL of position j + 1
            total = float(scored.astype(np.float64).sum())
            return [{**keys, "metric": "mean_nll", "value": total / scored.size, **meta},
                    {**keys, "metric": "sum_nll", "value": total, **meta},
                    {**keys, "metric": "scored_tokens", "value": float(scored.size), **meta}]
        edges = bin_edges(sample.request.length, self.options.bins)
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            rows.append({**keys, "position_bin": int(lo), "metric": "nll", "value": float(answer[lo - 1 : hi - 1].mean()),
                         "position_end": int(hi), **meta})
        mean = float(answer.mean())
        rows.append({**keys, "metric": "mean_nll", "value": mean, **meta})
        rows.append({**keys, "metric": "perplexity", "value": math.exp(mean), **meta})
        return rows

    def summarize(self, frame):
        import pandas as pd

        groups = []
        order = {name: k for k, name in enumerate(pd.unique(frame["attention"]))}  # variants in run order
        for (attention, length), part in sorted(frame.groupby(["attention", "context_length"]),
                                                key=lambda item: (order[item[0][0]], item[0][1])):
            means = part[part.metric == "mean_nll"]
            extra = {}
            if "scored_from" in part.columns and part["scored_from"].notna().any():  # --stride or --match lm-eval
                nll_sum = float(part.loc[part.metric == "sum_nll", "value"].sum())
                tokens = int(part.loc[part.metric == "scored_tokens", "value"].sum())
                mean_nll = nll_sum / tokens
                extra = {"nll_sum": nll_sum}
                if self.options.match == "lm-eval":
                    docs = part[part.metric == "sum_nll"].drop_duplicates("document")
                    words, size = int(docs.doc_words.sum()), int(docs.doc_bytes.sum())
                    # lm-eval's weighted_perplexity and bits_per_byte aggregations over the scored documents
                    extra.update({"documents": len(docs), "words": words, "bytes": size,
                                  "word_perplexity": math.exp(nll_sum / words), "byte_perplexity": math.exp(nll_sum / size),
                                  "bits_per_byte": nll_sum / size / math.log(2)})
                else:
                    extra["stream_tokens"] = int(part["stream_tokens"].max())  # tokens == stream_tokens - 1 when uncapped
            else:
                mean_nll = float(means["value"].mean())
                tokens = int(len(means) * (length - 1))  # every window scores its positions 1..L-1
            row = {"attention": attention, "context_length": int(length), "samples": len(means), "tokens": tokens,
                   "mean_nll": mean_nll, "perplexity": math.exp(mean_nll), **extra}
            bins = part[part.metric == "nll"]
            if not bins.empty:
                last = bins[bins.position_bin == bins.position_bin.max()]
                row["nll_last_bin"] = float(last["value"].mean())
                row["last_bin"] = f"{int(last.position_bin.iloc[0])}-{int(last.position_end.iloc[0]) - 1}"
            groups.append(row)
        return pd.DataFrame(groups)

    def plot(self, frame, title, plots_dir):
        from evalkit import plots

        written = []
        bins = frame[frame.metric == "nll"]
        if not bins.empty:
            curve = bins.groupby(["attention", "context_length", "position_bin", "position_end"], as_index=False)["value"].mean()
            # Geometric midpoint: on a log axis a bin [lo, hi) sits visually at sqrt(lo * (hi - 1)).
            curve["position"] = np.sqrt(curve.position_bin * np.maximum(curve.position_bin, curve.position_end - 1))
            fig, ax = plots.figure()
            plots.lines_by_group(ax, curve, "position", "value", "context_length", style_by="attention",
                                 label_fmt=lambda n: f"L = {format_length(n)}")
            ax.set_xscale("log", base=2)
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_length(int(round(x)))))
            ax.set_xlabel("token position in the window (log scale)")
            ax.set_ylabel("mean NLL (nats / token)")
            ax.set_title(f"Loss vs position — {title}")
            ax.legend(title="context length", fontsize=8)
            written.append(plots.save(fig, plots_dir / "loss_vs_position.png"))
        summary = self.summarize(frame)
        if not summary.empty:
            fig, ax = plots.figure()
            for k, (attention, part) in enumerate(summary.groupby("attention")):
                part = part.sort_values("context_length")
                ax.plot(part.context_length, part.perplexity, plots.VARIANT_STYLES[k % 4], marker="o", label=attention)
            plots.length_axis(ax, summary.context_length.unique())
            mode = " (sliding window)" if self.options.stride else " (lm-eval rolling windows)" if self.options.match == "lm-eval" else ""
            ax.set_ylabel("perplexity" + mode)
            ax.set_title(f"Perplexity vs context length — {title}")
            ax.legend(title="attention", fontsize=8)
            written.append(plots.save(fig, plots_dir / "perplexity_vs_length.png"))
        return written
