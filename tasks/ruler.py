"""RULER (NVIDIA, arXiv 2404.06654): its 13 synthetic tasks, its scores, its average and effective length.

Each (task, length, index) is one prompt from ``evalkit.data.ruler`` (exact length, RULER's
wording) and one independent unit. The greedy output, up to RULER's generation budget for the
task, is scored by RULER's string match (all references, or any for QA): the RULER score. Where
the answer is one span, a second request on the same prompt scores it teacher-forced (evalkit's
``greedy_correct`` and answer log-prob); the runner shares prefixes within one request kind, so
that prompt is computed once for each of the two. A task that cannot run (QA without ``--qa-dataset``) is skipped with a note in the
summary and the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.data.options import CorpusOptions
from evalkit.core.errors import ConfigError, DataError, did_you_mean
from evalkit.core.grid import parse_lengths
from evalkit.models.requests import AnswerScoreRequest, GenerateRequest
from evalkit.report import stats
from evalkit.core.task import Sample, Task, option

AVERAGE = "average"


@dataclass(frozen=True)
class RulerOptions(CorpusOptions):
    tasks: str = option("all", "RULER tasks: all, or a comma list of niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2.")
    lengths: str = option("1k,2k,4k", "Context lengths (prompt tokens, chat template included): 4k,8k or 4k..32k.", grid=True)
    samples: int = option(10, "Samples per task and length (RULER reports 500).", grid=True)
    chat: str = option("auto", "Wrap each prompt in the tokenizer's chat template: auto (when it has one), on, off.", choices=("auto", "on", "off"))
    qa_dataset: list[str] | None = option(None, "Local SQuAD v2 and/or HotpotQA JSON files for qa_1/qa_2 (repeat the option, or a comma list); without them QA is skipped with a note.")
    threshold: str = option(str(stats.RULER_THRESHOLD), "Effective context length: the longest length whose average score stays at or above this (RULER's 0.856), or rel:F for F x the variant's average at its shortest length.", summary=True)

    def task_names(self) -> list[str]:
        from evalkit.data.ruler import TASKS

        names = list(TASKS) if self.tasks.strip() == "all" else [t.strip() for t in self.tasks.split(",") if t.strip()]
        unknown = [t for t in names if t not in TASKS]
        if unknown or not names:
            hint = did_you_mean(unknown[0], TASKS) if unknown else ""
            raise ConfigError(f"unknown RULER task(s): {', '.join(unknown) or '(none given)'}", f"{hint}choose from all, {', '.join(TASKS)}")
        return list(dict.fromkeys(names))

    def qa_files(self) -> tuple[str, ...]:
        return tuple(p.strip() for item in self.qa_dataset or () for p in str(item).split(",") if p.strip())


class RulerTask(Task):
    name = "ruler"
    description = "RULER's 13 synthetic long-context tasks: per-task score, the average over tasks and the effective length."
    Options = RulerOptions
    key_columns = ("ruler_task", "index")

    def __init__(self, options: RulerOptions, context):
        super().__init__(options, context)
        self.tasks, self.lengths = options.task_names(), parse_lengths(options.lengths)
        if options.samples < 1:
            raise ConfigError(f"bad --samples {options.samples}", "give at least 1")
        stats.threshold_level(options.threshold, 1.0)  # a bad --threshold fails before the model loads
        missing = [p for p in options.qa_files() if not Path(p).expanduser().is_file()]
        if missing:
            raise DataError(f"--qa-dataset file {missing[0]} does not exist", "give the path of a local SQuAD v2 or HotpotQA JSON file")
        self.skipped: dict[str, str] = {}

    def _source(self):
        from evalkit.data.ruler import RulerSource

        # the built-in corpus is loaded on demand, by the tasks that read it
        stream = self.options.token_stream(self.context.tokenizer) if self.options.dataset else None
        return RulerSource(self.context.tokenizer, self.options.chat, self.context.seed, stream, self.options.qa_files())

    def _generators(self) -> dict:
        """Each asked task's generator; a task whose module this install lacks is skipped, said in the summary."""
        from evalkit.data.ruler import TASKS, generator

        found = {}
        for name in self.tasks:
            try:
                found[name] = generator(name)
            except ModuleNotFoundError as exc:
                if exc.name != f"evalkit.data.ruler.{TASKS[name].module}":
                    raise  # a real import error inside the module: never hidden
                self.skipped[name] = f"its generator (evalkit.data.ruler.{TASKS[name].module}) is not installed"
        return found

    def samples(self) -> list[Sample]:
        from evalkit.data.ruler import TASKS, SkipTask

        source, out = self._source(), []
        for name, build in self._generators().items():
            info = TASKS[name]
            try:
                built = [build(source, length, index) for length in self.lengths for index in range(self.options.samples)]
            except SkipTask as exc:
                self.skipped[name] = str(exc)
                continue
            for s in built:
                prompt = np.asarray(s.prompt_ids, np.int64)
                keys = {"context_length": s.context_length, "ruler_task": name, "index": s.index}
                meta = {"answers": json.dumps(list(s.answers)), "seed": self.context.seed,
                        "provenance": json.dumps(s.provenance, default=str)}
                sid = f"{name}-L{s.context_length}-i{s.index}"
                out.append(Sample(f"{sid}-gen", GenerateRequest(prompt, info.max_new_tokens), keys, meta))
                if s.answer_ids:
                    out.append(Sample(f"{sid}-score", AnswerScoreRequest(prompt, np.asarray(s.answer_ids, np.int64)), keys, meta))
        if not out:
            raise ConfigError("no RULER task can run: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()),
                              "choose other --tasks, or give what they need (--qa-dataset for qa_1/qa_2)")
        return out

    def provenance(self) -> dict:
        return {"ruler": {"tasks": [t for t in self.tasks if t not in self.skipped], "skipped": dict(self.skipped)}}

    def rows(self, sample: Sample, answer) -> list[dict]:
        from evalkit.data.ruler import TASKS
        from evalkit.core.scoring import STRING_MATCH

        base = {**sample.keys, **sample.meta}
        if isinstance(sample.request, GenerateRequest):
            text = self.context.tokenizer.decode(answer, skip_special_tokens=True)
            score = STRING_MATCH[TASKS[sample.keys["ruler_task"]].metric](text, json.loads(sample.meta["answers"]))
            return [{**base, "metric": "string_match", "value": float(score), "generated": text}]
        return [{**base, "metric": "greedy_correct", "value": float(answer.greedy_correct)},
                {**base, "metric": "answer_logprob", "value": answer.logprob}]

    def summarize(self, frame):
        """Per (variant, task, length): the RULER score (string match; Wilson for 0/1 scores, t for
        fractions) and, for one-span answers, greedy_correct and the answer log-prob; per (variant,
        length): the average over tasks, RULER's headline (each task counts once); per variant
        ("all"): the average over lengths and the effective length with its interval. Skipped
        tasks are one row each with the reason in ``note``."""
        import pandas as pd

        units = self.unit_columns(self.options)
        rows = []
        for attention in pd.unique(frame["attention"]):
            part = frame[frame.attention == attention]
            order = {name: k for k, name in enumerate(self.tasks)}  # RULER's task order, then length
            cells = sorted(part.groupby(["ruler_task", "context_length"]), key=lambda c: (order.get(c[0][0], len(order)), c[0][1]))
            for (task, length), group in cells:
                score = group[group.metric == "string_match"]
                e = stats.estimate(score.value, stats.unit_keys(score, units))
                row = {"attention": attention, "ruler_task": task, "context_length": int(length), "n": e.n, "units": e.units,
                       **stats.columns(stats.clipped(e), "score")}
                forced = group[group.metric == "greedy_correct"]
                if len(forced):
                    row.update(stats.columns(stats.proportion(forced.value, stats.unit_keys(forced, units)), "greedy_correct"))
                    logprob = group[group.metric == "answer_logprob"]
                    row.update(stats.columns(stats.mean(logprob.value, stats.unit_keys(logprob, units)), "answer_logprob"))
                rows.append(row)
            averages = []
            scores = part[part.metric == "string_match"]
            for length, group in [(int(n), g) for n, g in sorted(scores.groupby("context_length"))] + [("all", scores)]:
                e = stats.mean_of_means(group.value, group.ruler_task, stats.unit_keys(group, units))
                averages.append({"attention": attention, "ruler_task": AVERAGE, "context_length": length, "n": e.n,
                                 "units": e.units, "tasks": group.ruler_task.nunique(), **stats.columns(stats.clipped(e), "score")})
            averages[-1].update(stats.effective_length_columns(pd.DataFrame(averages[:-1]), "score", self.options.threshold))
            rows += averages
        rows += [{"ruler_task": name, "note": f"skipped: {why}"} for name, why in self.skipped.items()]
        return stats.lengths_as_integers(pd.DataFrame(rows))

    def plot(self, frame, title, plots_dir):
        from tasks.ruler_plots import average_vs_length, score_per_task

        summary = self.summarize(frame)
        train = self.context.marked_length
        return [score_per_task(summary, title, train, plots_dir / "ruler_score_per_task.png"),
                average_vs_length(summary, title, train, plots_dir / "ruler_average_vs_length.png")]
