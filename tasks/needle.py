"""Needle-in-a-haystack retrieval: accuracy over context length x needle depth.

Samples come from ``evalkit.data.haystack`` (exact token lengths, needle at a sentence
boundary, RULER-style variants, ABCDigits). Default scoring is one teacher-forced forward pass
per sample: ``greedy_correct`` is exactly whether greedy decoding would produce the answer, and
the answer's log-prob shows retrieval even where a small model's greedy answer fails.
``--scoring generate`` runs real greedy generation with the KV cache instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from evalkit.core.errors import ConfigError
from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from evalkit.core.scoring import parse_answer
from evalkit.core.task import Sample, Task, option
from evalkit.data.options import NeedleGridOptions, needle_samples, parse_trials, provenance
from evalkit.report import stats


@dataclass(frozen=True)
class NeedleOptions(NeedleGridOptions):
    scoring: str = option(
        "logprob",
        "logprob: one teacher-forced pass; generate: greedy generation, answer parsed.",
        choices=("logprob", "generate"),
    )
    max_new_tokens: int | None = option(None, "Generation budget with --scoring generate (default: answer tokens + 8).")
    plan_baseline: str | None = option(
        None,
        "With --trials auto:D: size the grid from this baseline run's own spread across trials and its "
        "judged cells (evalkit plan --baseline).",
        grid=True,
    )
    threshold: str = option(
        str(stats.RULER_THRESHOLD),
        "Effective context length: the longest length whose accuracy stays at or above this (RULER's 0.856), or "
        "rel:F for F x the variant's accuracy at its shortest length.",
        summary=True,
    )

    def __post_init__(self):
        super().__post_init__()
        stats.threshold_level(self.threshold, 1.0)  # a bad --threshold fails before the model loads, not after the run


class NeedleTask(Task):
    name = "needle"
    description = "Needle-in-a-haystack retrieval accuracy over context length x depth (passkey, kv, ABCDigits)."
    Options = NeedleOptions
    key_columns = ("depth", "trial", "needle")

    @classmethod
    def request_kinds(cls, options) -> frozenset[str]:
        return frozenset({"generate" if options.scoring == "generate" else "answer_score"})

    @classmethod
    def unit_columns(cls, options) -> tuple[str, ...]:
        from evalkit.data.options import needle_unit_columns

        return needle_unit_columns(options)

    def __init__(self, options: NeedleOptions, context):
        super().__init__(options, context)
        self.lengths, self.depths = options.validate()
        self.trials, self.trials_rule = self._resolve_trials()

    # judged metrics per length in a compare: greedy_correct and answer_logprob, or exact_match and contains
    JUDGED_PER_LENGTH = 2

    def _resolve_trials(self) -> tuple[int, str | None]:
        """``--trials`` as a number, before any sample is built; ``auto:D`` through ``evalkit plan``."""
        spec = parse_trials(self.options.trials)
        if self.options.plan_baseline and isinstance(spec, int):
            raise ConfigError(
                "--plan-baseline sizes --trials auto:D only", "give --trials auto:D, or drop --plan-baseline"
            )
        if isinstance(spec, int):
            return spec, None
        if self.options.samples_file:
            raise ConfigError(
                "--trials auto:D sizes a generated grid; --samples-file prompts are fixed",
                "drop --trials, or --samples-file",
            )
        from evalkit.report.power import auto_trials

        cells = self.JUDGED_PER_LENGTH * len(self.lengths)
        return auto_trials(spec.detect, cells, spec.accuracy, self.options.plan_baseline)

    def provenance(self) -> dict:
        return {"trials": {"spec": self.options.trials, "resolved": self.trials, "rule": self.trials_rule}}

    def _numbered(self) -> list[tuple[str, object]]:
        """(sample id, NeedleSample) for the grid, ids stable across runs with the same options."""
        return [
            (f"f{k}" if self.options.samples_file else f"L{s.context_length}-d{s.depth:g}-t{s.trial}", s)
            for k, s in enumerate(needle_samples(self.options, self.context, self.lengths, self.depths, self.trials))
        ]

    def samples(self) -> list[Sample]:
        out = []
        for sample_id, s in self._numbered():
            if self.options.scoring == "generate":
                request = GenerateRequest(s.prompt_ids, self.options.max_new_tokens or len(s.answer_ids) + 8)
            else:
                request = AnswerScoreRequest(s.prompt_ids, s.answer_ids)
            out.append(
                Sample(
                    sample_id,
                    request,
                    {"context_length": s.context_length, "depth": s.depth, "trial": s.trial, "needle": s.needle_kind},
                    {"answer": s.answer_text, **provenance(s, self.context.seed)},
                )
            )
        return out

    def export_records(self) -> list[dict]:
        from evalkit.store.records import needle_records

        return needle_records(self._numbered(), self.context.tokenizer, self.context.seed)

    def rows(self, sample: Sample, answer) -> list[dict]:
        base = {**sample.keys, **sample.meta}
        if isinstance(sample.request, GenerateRequest):
            text = self.context.tokenizer.decode(answer, skip_special_tokens=True)
            gold = " ".join(sample.meta["answer"].split())
            return [
                {**base, "metric": "exact_match", "value": float(parse_answer(text, gold) == gold), "generated": text},
                {**base, "metric": "contains", "value": float(gold in text), "generated": text},
            ]
        return [
            {**base, "metric": "greedy_correct", "value": float(answer.greedy_correct)},
            {**base, "metric": "answer_logprob", "value": answer.logprob},
            {**base, "metric": "answer_mean_logprob", "value": answer.mean_logprob},
            {**base, "metric": "answer_rank", "value": float(answer.first_token_rank)},
        ]

    @property
    def accuracy_metric(self) -> str:
        return "contains" if self.options.scoring == "generate" else "greedy_correct"

    def summarize(self, frame):
        """Per variant and length, then pooled ("all"): accuracy (cluster-adjusted Wilson) and the
        answer log-prob (t), each with its 95% interval over independent units (needle trials);
        on the pooled row, the variant's effective context length with its interval."""
        import pandas as pd

        units = self.unit_columns(self.options)
        rows = []
        for attention in pd.unique(frame["attention"]):
            part = frame[frame.attention == attention]
            groups = [(int(n), p) for n, p in sorted(part.groupby("context_length"))] + [("all", part)]
            for length, group in groups:
                acc = group[group.metric == self.accuracy_metric]
                e = stats.proportion(acc.value, stats.unit_keys(acc, units))
                row = {
                    "attention": attention,
                    "context_length": length,
                    "n": e.n,
                    "units": e.units,
                    **stats.columns(e, "accuracy"),
                }
                if self.options.scoring == "logprob":
                    logprob = group[group.metric == "answer_logprob"]
                    e = stats.mean(logprob.value, stats.unit_keys(logprob, units))
                    row.update(stats.columns(stats.clipped(e, -math.inf, 0.0), "answer_logprob"))  # a log-prob is <= 0
                    row["median_answer_rank"] = group[group.metric == "answer_rank"].value.median()
                rows.append(row)
            rows[-1].update(
                stats.effective_length_columns(
                    pd.DataFrame(rows[-len(groups) : -1]), "accuracy", self.options.threshold
                )
            )
        return stats.lengths_as_integers(pd.DataFrame(rows))

    def plot(self, frame, title, plots_dir):
        from tasks.needle_plots import accuracy_vs_length, heatmaps, logprob_vs_length

        train = self.context.marked_length
        summary = self.summarize(frame)
        acc = frame[frame.metric == self.accuracy_metric]
        written = [
            heatmaps(acc, title, train, plots_dir / "needle_heatmap.png"),
            accuracy_vs_length(summary, title, train, plots_dir / "accuracy_vs_length.png"),
        ]
        if "answer_logprob" in summary:
            written.append(logprob_vs_length(summary, title, train, plots_dir / "answer_logprob_vs_length.png"))
        return written
