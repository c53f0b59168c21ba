"""Needle-in-a-haystack retrieval: accuracy over context length x needle depth.

Samples come from ``evalkit.data.haystack`` (exact token lengths, needle at a sentence
boundary, RULER-style variants, ABCDigits). Default scoring is one teacher-forced forward pass
per sample: ``greedy_correct`` is exactly whether greedy decoding would produce the answer, and
the answer's log-prob shows retrieval even where a small model's greedy answer fails.
``--scoring generate`` runs real greedy generation with the KV cache instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.data.options import NeedleGridOptions, needle_samples, provenance
from evalkit.models.requests import AnswerScoreRequest, GenerateRequest
from evalkit.task import Sample, Task, option


@dataclass(frozen=True)
class NeedleOptions(NeedleGridOptions):
    scoring: str = option("logprob", "logprob: one teacher-forced pass; generate: greedy generation, answer parsed.", choices=("logprob", "generate"))
    max_new_tokens: int | None = option(None, "Generation budget with --scoring generate (default: answer tokens + 8).")


def parse_answer(text: str, gold: str) -> str:
    """The answer as a reader takes it from a continuation: its first line, as many words as the gold
    answer has, trailing punctuation dropped ("48213. Remember it." -> "48213")."""
    line = (text.strip().splitlines() or [""])[0]
    return " ".join(line.split()[: len(gold.split())]).rstrip(".,;:!?")


class NeedleTask(Task):
    name = "needle"
    description = "Needle-in-a-haystack retrieval accuracy over context length x depth (passkey, kv, ABCDigits)."
    Options = NeedleOptions
    key_columns = ("depth", "trial", "needle")

    @classmethod
    def unit_columns(cls, options) -> tuple[str, ...]:
        from evalkit.data.options import needle_unit_columns

        return needle_unit_columns(options)

    def __init__(self, options: NeedleOptions, context):
        super().__init__(options, context)
        self.lengths, self.depths = options.validate()

    def _numbered(self) -> list[tuple[str, object]]:
        """(sample id, NeedleSample) for the grid, ids stable across runs with the same options."""
        return [(f"f{k}" if self.options.samples_file else f"L{s.context_length}-d{s.depth:g}-t{s.trial}", s)
                for k, s in enumerate(needle_samples(self.options, self.context, self.lengths, self.depths))]

    def samples(self) -> list[Sample]:
        out = []
        for sample_id, s in self._numbered():
            if self.options.scoring == "generate":
                request = GenerateRequest(s.prompt_ids, self.options.max_new_tokens or len(s.answer_ids) + 8)
            else:
                request = AnswerScoreRequest(s.prompt_ids, s.answer_ids)
            out.append(Sample(sample_id, request,
                              {"context_length": s.context_length, "depth": s.depth, "trial": s.trial, "needle": s.needle_kind},
                              {"answer": s.answer_text, **provenance(s, self.context.seed)}))
        return out

    def export_records(self) -> list[dict]:
        from evalkit.export import needle_records

        return needle_records(self._numbered(), self.context.tokenizer, self.context.seed)

    def rows(self, sample: Sample, answer) -> list[dict]:
        base = {**sample.keys, **sample.meta}
        if isinstance(sample.request, GenerateRequest):
            text = self.context.tokenizer.decode(answer, skip_special_tokens=True)
            gold = " ".join(sample.meta["answer"].split())
            return [{**base, "metric": "exact_match", "value": float(parse_answer(text, gold) == gold), "generated": text},
                    {**base, "metric": "contains", "value": float(gold in text), "generated": text}]
        return [{**base, "metric": "greedy_correct", "value": float(answer.greedy_correct)},
                {**base, "metric": "answer_logprob", "value": answer.logprob},
                {**base, "metric": "answer_mean_logprob", "value": answer.mean_logprob},
                {**base, "metric": "answer_rank", "value": float(answer.first_token_rank)}]

    @property
    def accuracy_metric(self) -> str:
        return "contains" if self.options.scoring == "generate" else "greedy_correct"

    def summarize(self, frame):
        import pandas as pd

        rows = []
        order = list(pd.unique(frame["attention"]))
        for attention in order:
            part = frame[frame.attention == attention]
            groups = [(int(n), p) for n, p in sorted(part.groupby("context_length"))] + [("all", part)]
            for length, group in groups:
                acc = group[group.metric == self.accuracy_metric]
                row = {"attention": attention, "context_length": length, "samples": len(acc), "accuracy": acc.value.mean()}
                if self.options.scoring == "logprob":
                    row["mean_answer_logprob"] = group[group.metric == "answer_logprob"].value.mean()
                    row["median_answer_rank"] = group[group.metric == "answer_rank"].value.median()
                rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, frame, title, plots_dir):
        from tasks.needle_plots import accuracy_vs_length, heatmaps, metric_vs_length

        train = self.context.marked_length
        acc = frame[frame.metric == self.accuracy_metric]
        written = [heatmaps(acc, title, train, plots_dir / "needle_heatmap.png"),
                   accuracy_vs_length(acc, title, train, plots_dir / "accuracy_vs_length.png")]
        logprob = frame[frame.metric == "answer_logprob"]
        if not logprob.empty:
            written.append(metric_vs_length(logprob, "answer log-prob (nats, higher is better)", title, train,
                                            plots_dir / "answer_logprob_vs_length.png"))
        return written
