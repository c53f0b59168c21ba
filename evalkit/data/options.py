"""Options every corpus-reading task shares, so ``--dataset`` means one thing everywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evalkit.core.errors import ConfigError
from evalkit.core.grid import parse_lengths, parse_percentages
from evalkit.core.task import option
from evalkit.data.corpus import PYDOC_TOPICS, PYTHON_STDLIB

# The default needle haystack reads Python's documentation topics (prose, about 113k tokens on SmolLM2's
# tokenizer; 100k+ on any common one) up to this length and the standard library's source (3.3M tokens,
# enough for 1M-token haystacks) beyond it. The rule depends on the lengths alone, never on the tokenizer,
# so the corpus is known before the model loads and every length of a run reads the same text.
PROSE_HAYSTACK_UP_TO = 64 * 1024


@dataclass(frozen=True)
class CorpusOptions:
    dataset: str | None = option(
        None,
        "Text source: a .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset name. Default: the built-in "
        "corpus (Python's own documentation topics).",
    )
    text_field: str = option("text", "Field/column holding the text in .jsonl, .parquet and datasets.")
    split: str = option("train", "Dataset split, for Hugging Face datasets.")

    def resolved_dataset(self) -> str | None:
        """The corpus read: ``--dataset``, else the task's default (None: ``builtin:pydoc-topics``)."""
        return self.dataset

    def corpus(self):
        from evalkit.data.corpus import load_corpus

        return load_corpus(self.resolved_dataset(), self.text_field, self.split)

    def token_stream(self, tokenizer):
        """The corpus as one token stream (``evalkit.data.corpus.token_stream``)."""
        from evalkit.data.corpus import token_stream

        return token_stream(self.corpus(), tokenizer)


@dataclass(frozen=True)
class NeedleGridOptions(CorpusOptions):
    """The needle sample grid, shared by the needle and focus tasks (same samples, same flags)."""

    dataset: str | None = option(
        None,
        "Haystack text: builtin:pydoc-topics (Python's documentation topics, prose, about 113k tokens), "
        "builtin:python-stdlib (the standard library's source, about 3.3M tokens), a .txt/.jsonl/.parquet file or "
        "folder, or a Hugging Face dataset name. Default: builtin:pydoc-topics when every length is at most 64k, "
        "else builtin:python-stdlib (enough for 1M-token haystacks).",
    )
    lengths: str = option(
        "1k,2k,4k",
        "Context lengths (prompt tokens, chat template included): 1k,2k or 1k..16k. At the model's own limit "
        "prompt + answer fit in the length (RULER's convention; the manifest lists such lengths).",
        grid=True,
    )
    depths: str = option("0:100:25", "Needle depths in percent: START:STOP:STEP or a list.", grid=True)
    trials: str = option(
        "2",
        "Samples per (length, depth); each trial draws its own needle and haystack. "
        "needle: auto:D (or auto:D@A) runs the trials `evalkit plan` says a compare needs to see "
        "an accuracy drop of D at 80% power (at baseline accuracy A; default: the worst case, "
        "or --plan-baseline's spread); the manifest records the number and the rule.",
        grid=True,
    )
    draw: str = option(
        "trial",
        "trial: one needle and haystack per trial, shared by every depth and length (Kamradt's layout; the common "
        "prompt prefix is computed once); sample: a fresh draw for every (length, depth, trial).",
        choices=("trial", "sample"),
    )
    needle: str = option("passkey", "Needle kind.", choices=("passkey", "kv", "abcdigits"))
    haystack: str = option(
        "corpus",
        "Haystack: corpus text, RULER noise sentences, or one passage repeated.",
        choices=("corpus", "noise", "repeat"),
    )
    distractors: int = option(0, "Other needles of the same form that are not asked (multi-key).")
    values: int = option(1, "Values for the one key, all asked (multi-value; kv needles).")
    queries: int = option(1, "Keys asked at once (multi-query; kv needles).")
    digits: int = option(5, "Digits of the numbers to retrieve.")
    chat: str = option(
        "auto",
        "Wrap the question in the tokenizer's chat template: auto (when it has one; never around --samples-file "
        "prompts, used verbatim), on, off.",
        choices=("auto", "on", "off"),
    )
    samples_file: str | None = option(
        None,
        "Your own prompts: JSONL with prompt, answer, optional depth and needle; or exact prompt_ids and "
        "answer_ids (evalkit export writes them).",
    )

    def __post_init__(self):
        # an int from Python or a sweep TOML (trials = 5) is the same option as "5" from the CLI
        object.__setattr__(self, "trials", str(self.trials).strip())

    def resolved_dataset(self) -> str | None:
        """``--dataset``, else the built-in corpus long enough for the longest corpus haystack."""
        if self.dataset:
            return self.dataset
        reads_stream = self.haystack == "corpus" and self.needle != "abcdigits" and not self.samples_file
        if reads_stream and max(parse_lengths(self.lengths)) > PROSE_HAYSTACK_UP_TO:
            return PYTHON_STDLIB
        return PYDOC_TOPICS

    def validate(self) -> tuple[list[int], list[float]]:
        spec = parse_trials(self.trials)
        if isinstance(spec, int) and spec < 1:
            raise ConfigError(f"bad --trials {spec}", "give at least 1, or auto:D (e.g. auto:0.10)")
        for name in ("values", "queries", "digits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bad --{name} {getattr(self, name)}", "give at least 1")
        if self.distractors < 0:
            raise ConfigError(f"bad --distractors {self.distractors}", "give 0 or more")
        ignored_by = (
            "--samples-file"
            if self.samples_file
            else "--needle abcdigits"
            if self.needle == "abcdigits"
            else "--haystack noise"
            if self.haystack == "noise"
            else None
        )
        if self.dataset and ignored_by:  # the haystack is not read from a corpus: say so rather than ignore it
            raise ConfigError(f"--dataset is not read with {ignored_by}", f"drop --dataset, or drop {ignored_by}")
        return parse_lengths(self.lengths), parse_percentages(self.depths)


@dataclass(frozen=True)
class AutoTrials:
    """``--trials auto:D[@A]``: as many trials as a compare needs to see an accuracy drop of D."""

    detect: float
    accuracy: float | None = None  # the baseline accuracy planned at; None: the worst case


def parse_trials(text: str) -> int | AutoTrials:
    """``--trials``: a number of trials, or ``auto:D`` / ``auto:D@A`` (D the drop to detect, A the
    baseline accuracy, both in (0, 1])."""
    text = str(text).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    hint = "give a number of trials, or auto:D with D the accuracy drop to detect (auto:0.10), or auto:D@A"
    if not text.startswith("auto:"):
        raise ConfigError(f"bad --trials {text!r}", hint)
    detect, at, accuracy = text[len("auto:") :].partition("@")
    try:
        spec = AutoTrials(float(detect), float(accuracy) if at else None)
    except ValueError:
        raise ConfigError(f"bad --trials {text!r}", hint) from None
    if not 0 < spec.detect <= 1 or (spec.accuracy is not None and not spec.detect <= spec.accuracy <= 1):
        raise ConfigError(f"bad --trials {text!r}: D must be in (0, 1] and A in [D, 1] (a drop of D from A)", hint)
    return spec


def needle_samples(
    options: NeedleGridOptions,
    context,
    lengths,
    depths,
    trials: int | None = None,
    room: Callable[[int], int] = lambda answer_tokens: answer_tokens,
    record: dict | None = None,
):
    """The grid's ``NeedleSample``s, deterministic from the run's seed; ``trials`` resolved from an
    ``auto:D`` spec by the task (``--trials`` itself when it is a number).

    ``room``: answer tokens -> the tokens that follow the prompt in the task's request (the answer
    when scored, the generation budget, none for a probe of the prompt alone): at the model's own
    limit the prompt makes that room (``haystack.Fit``). ``record``, when given, receives what the
    manifest says about the haystack corpus and the lengths (``grid_provenance``)."""
    from evalkit.data import haystack

    if options.samples_file:
        return haystack.load_samples_file(options.samples_file, context.tokenizer, chat=options.chat)
    stream = corpus = None
    if options.haystack in ("corpus", "repeat") and options.needle != "abcdigits":
        from evalkit.data.corpus import token_stream

        corpus = options.corpus()
        stream = token_stream(corpus, context.tokenizer)
    settings = haystack.HaystackOptions(
        haystack=options.haystack,
        needle=options.needle,
        distractors=options.distractors,
        values=options.values,
        queries=options.queries,
        digits=options.digits,
        chat=options.chat,
        draw=options.draw,
    )
    if trials is None:
        trials = parse_trials(options.trials)
        if not isinstance(trials, int):
            raise ConfigError(f"--trials {options.trials} is not resolved here", "give a number of trials")
    fit = haystack.Fit(context.max_positions, room) if context.max_positions else None
    samples = haystack.build_samples(
        context.tokenizer, settings, lengths, depths, trials, context.seed, stream=stream, fit=fit
    )
    if record is not None:
        record.update(grid_provenance(options, corpus, stream, context, samples))
    return samples


def grid_provenance(options: NeedleGridOptions, corpus, stream, context, samples) -> dict:
    """The manifest's account of a built grid: which corpus the haystacks came from and why, and
    which lengths hold prompt + answer within L rather than an L-token prompt."""
    out = {}
    if corpus is not None:
        from evalkit.data.corpus import stream_provenance

        why = (
            "--dataset"
            if options.dataset
            else f"default: {PYDOC_TOPICS} for lengths up to {PROSE_HAYSTACK_UP_TO}, {PYTHON_STDLIB} beyond"
        )
        out["haystack_corpus"] = {**stream_provenance(corpus, stream, context.tokenizer), "chosen_by": why}
    fitted: dict[str, list[int]] = {}
    for s in samples:
        if len(s.prompt_ids) != s.context_length:
            fitted.setdefault(str(s.context_length), []).append(len(s.prompt_ids))
    out["context_lengths"] = {
        "counting": "prompt tokens, chat template included; at the model's own limit, prompt + answer",
        "max_position_embeddings": context.max_positions,
        "prompt_plus_answer_within": {
            length: {"prompt_tokens": sorted(set(sizes)), "rule": "RULER: prompt + answer <= L"}
            for length, sizes in fitted.items()
        },
    }
    return out


def needle_unit_columns(options: NeedleGridOptions) -> tuple[str, ...]:
    """The independent unit of needle samples: with ``draw="trial"`` every depth and length of a
    trial reads the same needle and haystack, so the trial is the unit; otherwise each sample."""
    if options.draw == "trial" and not options.samples_file:
        return ("trial",)
    return ("context_length", "depth", "trial")


def provenance(sample, seed: int) -> dict:
    """Row columns that let a needle-grid row be recomputed without evalkit's builder.

    The prompt is head | haystack[:at] needle haystack[at:] | question: the haystack is
    ``haystack_tokens`` tokens of ``haystack_source`` from token ``haystack_offset`` (corpus:
    the token stream read as a ring), or drawn from ``np.random.default_rng(draw_seed)``.
    """
    start, end = sample.needle_spans[0] if sample.needle_spans else (-1, -1)
    info = sample.info
    return {
        "needle_start": int(start),
        "needle_end": int(end),
        "actual_depth": round(sample.actual_depth, 2),
        "seed": seed,
        "haystack": info.get("haystack", "file"),
        "haystack_source": info.get("haystack_source", info.get("source")),
        "haystack_offset": info.get("haystack_offset"),
        "haystack_tokens": info.get("haystack_tokens"),
        "prompt_tokens": int(len(sample.prompt_ids)),
        "draw_seed": ",".join(map(str, info["draw_seed"])) if "draw_seed" in info else None,
    }
