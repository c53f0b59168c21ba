"""RULER (NVIDIA, arXiv 2404.06654): its 13 synthetic tasks, its scores, its average and effective length.

Each (task, length, index) is one prompt and one independent unit. ``--fill nvidia`` (the default) builds the
prompts as NVIDIA's generator does (``evalkit.data.ruler.nvidia``: prompt + generation budget within the
length, RULER's templates, haystack search and draws), so scores sit beside published tables; ``--fill exact``
builds evalkit's exact-length prompts (``evalkit.data.ruler``), labelled not RULER-comparable. The greedy
output, up to RULER's generation budget for the task, is scored by RULER's string match (all references, or
any for QA): the RULER score. Where the answer is one span, a second request on the same prompt scores it
teacher-forced (evalkit's ``greedy_correct`` and answer log-prob); the runner shares prefixes within one
request kind, so that prompt is computed once for each of the two. A task that cannot run (QA without
``--qa-dataset``) is skipped with a note in the summary and the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.core.errors import ConfigError, DataError, did_you_mean
from evalkit.core.grid import parse_lengths
from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from evalkit.core.task import Sample, Task, option
from evalkit.data.options import CorpusOptions
from evalkit.report import stats

AVERAGE = "average"
ALL_TASKS = 13
DEFAULT_SEED = 1234  # evalkit run's --seed default: it maps to RULER's --random_seed 42


@dataclass(frozen=True)
class RulerOptions(CorpusOptions):
    tasks: str = option(
        "all",
        "RULER tasks: all, or a comma list of niah_single_1..3, niah_multikey_1..3, niah_multivalue, "
        "niah_multiquery, vt, cwe, fwe, qa_1, qa_2.",
    )
    lengths: str = option(
        "1k,2k,4k",
        "Context lengths, 4k,8k or 4k..32k: --fill nvidia fits prompt + the task's "
        "generation budget within each (RULER's); exact makes the prompt (chat template included) "
        "exactly that long.",
        grid=True,
    )
    samples: int = option(10, "Samples per task and length (RULER reports 500).", grid=True)
    fill: str = option(
        "nvidia",
        "nvidia: prompts as NVIDIA's RULER generator builds them (prompt + generation budget "
        "within the length; comparable with published tables); exact: evalkit's exact-length "
        "prompts (not RULER-comparable).",
        choices=("nvidia", "exact"),
    )
    template: str = option(
        "base",
        "RULER's model template (--fill nvidia): base, meta-chat, vicuna-chat, lwm-chat, "
        "command-r-chat, chatglm-chat, RWKV, Phi3, meta-llama3, jamba, nemotron5-instruct, "
        "or hf-chat for the tokenizer's own chat template.",
    )
    chat: str = option(
        "auto",
        "--fill exact only: wrap each prompt in the tokenizer's chat template: auto (when it has one), on, off.",
        choices=("auto", "on", "off"),
    )
    qa_dataset: list[str] | None = option(
        None,
        "Local SQuAD v2 and/or HotpotQA JSON files for qa_1/qa_2 (repeat the option, or a comma list); without "
        "them QA is skipped with a note.",
    )
    threshold: str = option(
        str(stats.RULER_THRESHOLD),
        "Effective context length: the longest length whose average score stays at or above this (RULER's 0.856), "
        "or rel:F for F x the variant's average at its shortest length.",
        summary=True,
    )

    def task_names(self) -> list[str]:
        from evalkit.data.ruler import TASKS

        names = list(TASKS) if self.tasks.strip() == "all" else [t.strip() for t in self.tasks.split(",") if t.strip()]
        unknown = [t for t in names if t not in TASKS]
        if unknown or not names:
            hint = did_you_mean(unknown[0], TASKS) if unknown else ""
            raise ConfigError(
                f"unknown RULER task(s): {', '.join(unknown) or '(none given)'}",
                f"{hint}choose from all, {', '.join(TASKS)}",
            )
        return list(dict.fromkeys(names))

    def qa_files(self) -> tuple[str, ...]:
        return tuple(p.strip() for item in self.qa_dataset or () for p in str(item).split(",") if p.strip())


def _family(name: str) -> str:
    """RULER's generator script a task belongs to (the key of its template and budget)."""
    return {
        "vt": "variable_tracking",
        "cwe": "common_words_extraction",
        "fwe": "freq_words_extraction",
        "qa_1": "qa",
        "qa_2": "qa",
    }.get(name, "niah")


class RulerTask(Task):
    name = "ruler"
    description = (
        "RULER's 13 synthetic long-context tasks: per-task score, the average over tasks and the effective length."
    )
    Options = RulerOptions
    key_columns = ("ruler_task", "index")

    @classmethod
    def request_kinds(cls, options) -> frozenset[str]:
        # every sample is generated (string_match); single-answer ones are also scored teacher-forced
        return frozenset({"generate", "answer_score"})

    def __init__(self, options: RulerOptions, context):
        super().__init__(options, context)
        self.tasks, self.lengths = options.task_names(), parse_lengths(options.lengths)
        if options.samples < 1:
            raise ConfigError(f"bad --samples {options.samples}", "give at least 1")
        stats.threshold_level(options.threshold, 1.0)  # a bad --threshold fails before the model loads
        missing = [p for p in options.qa_files() if not Path(p).expanduser().is_file()]
        if missing:
            raise DataError(
                f"--qa-dataset file {missing[0]} does not exist",
                "give the path of a local SQuAD v2 or HotpotQA JSON file",
            )
        from evalkit.data.ruler.nvidia import TEMPLATE_CHOICES, model_template

        if options.fill == "nvidia":
            if options.template != "hf-chat":
                model_template(options.template, None)  # a bad name fails before the model loads
        elif options.template != "base":
            raise ConfigError(
                f"--template {options.template} is RULER's protocol, not --fill exact's",
                f"drop --template (exact uses --chat), or use --fill nvidia; templates: {', '.join(TEMPLATE_CHOICES)}",
            )
        self.skipped: dict[str, str] = {}
        self._essay = None

    @property
    def ruler_seed(self) -> int:
        """RULER's --random_seed: 42 for evalkit's default --seed 1234, shifted with it (numpy needs 0..2**32-1)."""
        return (42 + self.context.seed - DEFAULT_SEED) % 2**32

    def essay(self):
        from evalkit.data.ruler.nvidia import essay_from

        if self._essay is None:
            self._essay = essay_from(self.options.dataset, self.options.text_field, self.options.split)
        return self._essay

    def comparable(self) -> str:
        """ "RULER-comparable", or why not: the label summary, terminal, plots and manifest carry."""
        ran = [t for t in self.tasks if t not in self.skipped]
        why = []
        if self.options.fill != "nvidia":
            why.append("--fill exact")
        if len(ran) < ALL_TASKS:
            why.append(f"{len(ran)} of {ALL_TASKS} tasks")
        return "RULER-comparable" if not why else "not RULER-comparable: " + ", ".join(why)

    def _source(self):
        from evalkit.data.ruler import RulerSource

        # the built-in corpus is loaded on demand, by the tasks that read it
        stream = self.options.token_stream(self.context.tokenizer) if self.options.dataset else None
        return RulerSource(
            self.context.tokenizer, self.options.chat, self.context.seed, stream, self.options.qa_files()
        )

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

    def _nvidia_built(self) -> dict:
        """{(task, length): [nvidia.Built]} for every task that can run (built together: RULER's draws are
        sequential)."""
        from evalkit.data.ruler import SkipTask, nvidia, nvidia_tasks

        source = nvidia.Source(
            self.context.tokenizer, self.options.template, self.ruler_seed, None, self.options.qa_files()
        )
        built = {}
        for name in self.tasks:
            if name in nvidia.NIAH and nvidia.NIAH[name].haystack == "essay":
                source.essay = self.essay()
            try:
                built.update(
                    {(name, n): nvidia_tasks.build_many(source, name, n, self.options.samples) for n in self.lengths}
                )
            except SkipTask as exc:
                self.skipped[name] = str(exc)
        return built

    def _nvidia_samples(self) -> list[Sample]:
        from evalkit.data.ruler import TASKS, nvidia

        out, tok = [], self.context.tokenizer
        for (name, length), built in self._nvidia_built().items():
            for index, b in enumerate(built):
                ids = nvidia.prompt_ids(tok, b)
                prompt = np.asarray(ids, np.int64)
                keys = {"context_length": length, "ruler_task": name, "index": index}
                meta = {
                    "answers": json.dumps(list(b.answers)),
                    "seed": self.context.seed,
                    "prompt_tokens": len(ids),
                    "provenance": json.dumps(
                        {
                            "protocol": "nvidia",
                            "template": self.options.template,
                            "ruler_seed": self.ruler_seed,
                            "ruler_length": b.length,
                            "haystack_units": b.units,
                            **b.info,
                        },
                        default=str,
                    ),
                }
                sid = f"{name}-L{length}-i{index}"
                out.append(Sample(f"{sid}-gen", GenerateRequest(prompt, TASKS[name].max_new_tokens), keys, meta))
                answer = (
                    nvidia.answer_ids(tok, ids, b.input + b.answer_prefix, b.answers[0])
                    if len(b.answers) == 1
                    else None
                )
                if answer:
                    out.append(
                        Sample(f"{sid}-score", AnswerScoreRequest(prompt, np.asarray(answer, np.int64)), keys, meta)
                    )
        if not out:
            raise ConfigError(
                "no RULER task can run: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()),
                "choose other --tasks, or give what they need (--qa-dataset for qa_1/qa_2)",
            )
        return out

    def export_records(self) -> list[dict]:
        """Every prompt as RULER writes it (input, answer_prefix, outputs) with the exact token ids the model sees."""
        from evalkit.data.ruler import nvidia

        if self.options.fill != "nvidia":
            records = []
            for sample in self.samples():
                if isinstance(sample.request, GenerateRequest):
                    ids = (
                        sample.request.prompt.tolist()
                        if hasattr(sample.request, "prompt")
                        else list(sample.request.tokens)
                    )
                    records.append(
                        {
                            "id": sample.id,
                            "task": sample.keys["ruler_task"],
                            **sample.keys,
                            "protocol": "exact",
                            "template": f"chat {self.options.chat}",
                            "text": self.context.tokenizer.decode(ids),
                            "prompt_ids": ids,
                            "outputs": json.loads(sample.meta["answers"]),
                        }
                    )
            return records
        tok, records = self.context.tokenizer, []
        for (name, length), built in self._nvidia_built().items():
            for index, b in enumerate(built):
                ids = nvidia.prompt_ids(tok, b)
                records.append(
                    {
                        "id": f"{name}-L{length}-i{index}",
                        "task": name,
                        "context_length": length,
                        "index": index,
                        "protocol": "nvidia",
                        "template": self.options.template,
                        "ruler_seed": self.ruler_seed,
                        "input": b.input,
                        "answer_prefix": b.answer_prefix,
                        "outputs": list(b.answers),
                        "length": b.length,
                        "prompt_ids": ids,
                        "prompt_tokens": len(ids),
                        "max_new_tokens": nvidia.TASK_TEXT[_family(name)].tokens_to_generate,
                    }
                )
        return records

    def samples(self) -> list[Sample]:
        from evalkit.data.ruler import TASKS, SkipTask

        if self.options.fill == "nvidia":
            return self._nvidia_samples()
        source, out = self._source(), []
        for name, build in self._generators().items():
            info = TASKS[name]
            try:
                built = [
                    build(source, length, index) for length in self.lengths for index in range(self.options.samples)
                ]
            except SkipTask as exc:
                self.skipped[name] = str(exc)
                continue
            for s in built:
                prompt = np.asarray(s.prompt_ids, np.int64)
                keys = {"context_length": s.context_length, "ruler_task": name, "index": s.index}
                meta = {
                    "answers": json.dumps(list(s.answers)),
                    "seed": self.context.seed,
                    "provenance": json.dumps(s.provenance, default=str),
                }
                sid = f"{name}-L{s.context_length}-i{s.index}"
                out.append(Sample(f"{sid}-gen", GenerateRequest(prompt, info.max_new_tokens), keys, meta))
                if s.answer_ids:
                    out.append(
                        Sample(
                            f"{sid}-score", AnswerScoreRequest(prompt, np.asarray(s.answer_ids, np.int64)), keys, meta
                        )
                    )
        if not out:
            raise ConfigError(
                "no RULER task can run: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()),
                "choose other --tasks, or give what they need (--qa-dataset for qa_1/qa_2)",
            )
        return out

    def provenance(self) -> dict:
        from evalkit.data.ruler import nvidia

        info = {
            "tasks": [t for t in self.tasks if t not in self.skipped],
            "skipped": dict(self.skipped),
            "protocol": self.options.fill,
            "comparable": self.comparable(),
        }
        if self.options.fill == "nvidia":
            info.update(
                template=self.options.template,
                ruler_seed=self.ruler_seed,
                length_convention="prompt tokens + the task's generation budget <= the length (RULER's)",
            )
            if self._essay is not None:
                info["haystack"] = {
                    "source": self._essay.source,
                    "normalization": nvidia.NORMALIZATION,
                    "sentence_splitter": self._essay.splitter,
                    "words": len(self._essay.words),
                }
        else:
            info.update(chat=self.options.chat, length_convention="prompt tokens = the length exactly (evalkit's)")
        return {"ruler": info}

    def rows(self, sample: Sample, answer) -> list[dict]:
        from evalkit.core.scoring import STRING_MATCH
        from evalkit.data.ruler import TASKS

        base = {**sample.keys, **sample.meta}
        if isinstance(sample.request, GenerateRequest):
            text = self.context.tokenizer.decode(answer, skip_special_tokens=True)
            score = STRING_MATCH[TASKS[sample.keys["ruler_task"]].metric](text, json.loads(sample.meta["answers"]))
            return [{**base, "metric": "string_match", "value": float(score), "generated": text}]
        return [
            {**base, "metric": "greedy_correct", "value": float(answer.greedy_correct)},
            {**base, "metric": "answer_logprob", "value": answer.logprob},
        ]

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
            cells = sorted(
                part.groupby(["ruler_task", "context_length"]), key=lambda c: (order.get(c[0][0], len(order)), c[0][1])
            )
            for (task, length), group in cells:
                score = group[group.metric == "string_match"]
                e = stats.estimate(score.value, stats.unit_keys(score, units))
                row = {
                    "attention": attention,
                    "ruler_task": task,
                    "context_length": int(length),
                    "n": e.n,
                    "units": e.units,
                    **stats.columns(stats.clipped(e), "score"),
                }
                forced = group[group.metric == "greedy_correct"]
                if len(forced):
                    row.update(
                        stats.columns(stats.proportion(forced.value, stats.unit_keys(forced, units)), "greedy_correct")
                    )
                    logprob = group[group.metric == "answer_logprob"]
                    row.update(
                        stats.columns(stats.mean(logprob.value, stats.unit_keys(logprob, units)), "answer_logprob")
                    )
                rows.append(row)
            averages = []
            scores = part[part.metric == "string_match"]
            for length, group in [(int(n), g) for n, g in sorted(scores.groupby("context_length"))] + [("all", scores)]:
                e = stats.mean_of_means(group.value, group.ruler_task, stats.unit_keys(group, units))
                averages.append(
                    {
                        "attention": attention,
                        "ruler_task": AVERAGE,
                        "context_length": length,
                        "n": e.n,
                        "units": e.units,
                        "tasks": group.ruler_task.nunique(),
                        **stats.columns(stats.clipped(e), "score"),
                    }
                )
            averages[-1].update(
                stats.effective_length_columns(pd.DataFrame(averages[:-1]), "score", self.options.threshold)
            )
            for direction in ("inc", "dec"):
                e = stats.ruler_weighted_average(
                    scores.value,
                    scores.ruler_task,
                    scores.context_length,
                    stats.unit_keys(scores, units),
                    increasing=direction == "inc",
                )
                averages[-1].update(stats.columns(stats.clipped(e), f"wavg_{direction}"))
            label = self.comparable()
            for row in averages:
                row["comparable"] = label
            if label != "RULER-comparable" and "effective_length" in averages[-1]:
                averages[-1]["note"] = (
                    f"effective length {label} (85.6 is RULER's 13-task threshold under its protocol)"
                )
            rows += averages
        rows += [{"ruler_task": name, "note": f"skipped: {why}"} for name, why in self.skipped.items()]
        return stats.lengths_as_integers(pd.DataFrame(rows))

    def plot(self, frame, title, plots_dir):
        from tasks.ruler_plots import average_vs_length, score_per_task

        summary = self.summarize(frame)
        train = self.context.marked_length
        return [
            score_per_task(summary, title, train, plots_dir / "ruler_score_per_task.png"),
            average_vs_length(summary, title, train, plots_dir / "ruler_average_vs_length.png"),
        ]
