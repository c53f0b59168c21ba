"""Needle-in-a-haystack retrieval: accuracy over context length x needle depth.

Samples come from ``evalkit.data.haystack`` (exact token lengths, needle at a sentence
boundary, RULER-style variants, ABCDigits). Default scoring is one teacher-forced forward pass
per sample: ``greedy_correct`` is exactly whether greedy decoding would produce the answer, and
the answer's log-prob shows retrieval even where a small model's greedy answer fails.
``--scoring generate`` runs real greedy generation with the KV cache instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.data.options import CorpusOptions
from evalkit.errors import ConfigError
from evalkit.grid import parse_lengths, parse_percentages
from evalkit.models.requests import AnswerScoreRequest, GenerateRequest
from evalkit.task import Sample, Task, option


@dataclass(frozen=True)
class NeedleOptions(CorpusOptions):
    lengths: str = option("1k,2k,4k", "Context lengths (prompt tokens, chat template included): 1k,2k or 1k..16k.", grid=True)
    depths: str = option("0:100:25", "Needle depths in percent: START:STOP:STEP or a list.", grid=True)
    trials: int = option(2, "Samples per (length, depth), each with its own needle and haystack offset.", grid=True)
    needle: str = option("passkey", "Needle kind.", choices=("passkey", "kv", "abcdigits"))
    haystack: str = option("corpus", "Haystack: corpus text, RULER noise sentences, or one passage repeated.", choices=("corpus", "noise", "repeat"))
    distractors: int = option(0, "Other needles of the same form that are not asked (multi-key).")
    values: int = option(1, "Values for the one key, all asked (multi-value; kv needles).")
    queries: int = option(1, "Keys asked at once (multi-query; kv needles).")
    digits: int = option(5, "Digits of the numbers to retrieve.")
    chat: str = option("auto", "Wrap the question in the tokenizer's chat template: auto (when it has one), on, off.", choices=("auto", "on", "off"))
    scoring: str = option("logprob", "logprob: one teacher-forced pass; generate: greedy generation, answer parsed.", choices=("logprob", "generate"))
    samples_file: str | None = option(None, "Your own prompts: JSONL with prompt, answer, optional depth and needle.")
    max_new_tokens: int | None = option(None, "Generation budget with --scoring generate (default: answer tokens + 8).")


class NeedleTask(Task):
    name = "needle"
    description = "Needle-in-a-haystack retrieval accuracy over context length x depth (passkey, kv, ABCDigits)."
    Options = NeedleOptions
    key_columns = ("depth", "trial", "needle")

    def __init__(self, options: NeedleOptions, context):
        super().__init__(options, context)
        for name in ("trials", "values", "queries", "digits"):
            if getattr(options, name) < 1:
                raise ConfigError(f"bad --{name} {getattr(options, name)}", "give at least 1")
        if options.distractors < 0:
            raise ConfigError(f"bad --distractors {options.distractors}", "give 0 or more")
        self.lengths = parse_lengths(options.lengths)
        self.depths = parse_percentages(options.depths)

    def _needle_samples(self):
        from evalkit.data import haystack

        o = self.options
        if o.samples_file:
            return haystack.load_samples_file(o.samples_file, self.context.tokenizer, chat=o.chat)
        stream = None
        if o.haystack == "corpus" and o.needle != "abcdigits":
            from evalkit.data.corpus import load_corpus, token_stream

            stream = token_stream(load_corpus(o.dataset, o.text_field, o.split), self.context.tokenizer)
        settings = haystack.HaystackOptions(haystack=o.haystack, needle=o.needle, distractors=o.distractors,
                                            values=o.values, queries=o.queries, digits=o.digits, chat=o.chat)
        return haystack.build_samples(self.context.tokenizer, settings, self.lengths, self.depths, o.trials,
                                      self.context.seed, stream=stream)

    def samples(self) -> list[Sample]:
        out = []
        for k, s in enumerate(self._needle_samples()):
            sample_id = f"f{k}" if self.options.samples_file else f"L{s.context_length}-d{s.depth:g}-t{s.trial}"
            if self.options.scoring == "generate":
                request = GenerateRequest(s.prompt_ids, self.options.max_new_tokens or len(s.answer_ids) + 8)
            else:
                request = AnswerScoreRequest(s.prompt_ids, s.answer_ids)
            start, end = s.needle_spans[0] if s.needle_spans else (-1, -1)
            out.append(Sample(sample_id, request,
                              {"context_length": s.context_length, "depth": s.depth, "trial": s.trial, "needle": s.needle_kind},
                              {"actual_depth": round(s.actual_depth, 2), "answer": s.answer_text,
                               "needle_start": int(start), "needle_end": int(end)}))
        return out

    def rows(self, sample: Sample, answer) -> list[dict]:
        base = {**sample.keys, **sample.meta}
        if isinstance(sample.request, GenerateRequest):
            text = self.context.tokenizer.decode(answer, skip_special_tokens=True)
            gold = sample.meta["answer"].strip()
            said = text.strip().rstrip(".").strip()
            return [{**base, "metric": "exact_match", "value": float(said == gold), "generated": text},
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

        train = self.context.max_positions
        acc = frame[frame.metric == self.accuracy_metric]
        written = [heatmaps(acc, title, train, plots_dir / "needle_heatmap.png"),
                   accuracy_vs_length(acc, title, train, plots_dir / "accuracy_vs_length.png")]
        logprob = frame[frame.metric == "answer_logprob"]
        if not logprob.empty:
            written.append(metric_vs_length(logprob, "answer log-prob (nats, higher is better)", title, train,
                                            plots_dir / "answer_logprob_vs_length.png"))
        return written
