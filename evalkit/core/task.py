"""What a task plugin is.

A task is small: the samples of its grid, the request each sample needs from the model, how an
answer becomes tidy rows, and how rows become a summary and plots. It never touches torch and
never batches: the runner does that.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# Keys that index parts of one sample (a position bin, a head), never independent samples.
WITHIN_SAMPLE_KEYS = frozenset({"position_bin", "layer", "head"})


@dataclass(frozen=True)
class Sample:
    id: str  # stable across runs with the same options: the unit of resume
    request: Any  # a typed request from evalkit.core.requests
    keys: dict[str, Any]  # task key columns shared by all its rows (context_length, ...)
    meta: dict[str, Any] = field(default_factory=dict)  # recorded, not keys (source, offset, ...)
    first_variant_only: bool = (
        False  # answered under the run's first attention variant only (LongPPL's evaluator passes)
    )


def runs_under(sample: Sample, variant_index: int) -> bool:
    """Whether a sample is answered under the run's ``variant_index``-th attention variant."""
    return variant_index == 0 or not sample.first_variant_only


@dataclass(frozen=True)
class TaskContext:
    """What a task may know about the model: its tokenizer and limits, not the model itself."""

    tokenizer: Any
    max_positions: int | None
    allow_extrapolation: bool
    seed: int
    training_length: int | None = None  # when the checkpoint records it; plots mark it
    # Where a position's loss stops depending only on the tokens before it: (longest row length that
    # is still exact, why). A window's first L positions then score as a window of L only for rows
    # up to every limit (--ssmax-n length: 1; a sliding window of W: W). Set from the loaded model.
    prefix_limits: tuple[tuple[int, str], ...] = ()

    @property
    def marked_length(self) -> int | None:
        """The length figures mark as 'training length': recorded, else the position limit."""
        return self.training_length or self.max_positions


def option(default, help: str, **extra):
    """A task option: a dataclass field whose help text the CLI shows."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type]  # a frozen dataclass of the task's options (fields made with option())
    key_columns: ClassVar[tuple[str, ...]]  # row key columns besides the common ones

    def __init__(self, options, context: TaskContext):
        self.options = options
        self.context = context

    @classmethod
    def unit_columns(cls, options) -> tuple[str, ...]:
        """Row columns that identify one independent unit: the resampling unit of every interval
        and the pairing unit of comparisons (with ``seed`` on top when rows carry it).

        By default a sample is a unit; tasks whose samples share text (needle trials) say so.
        """
        return cls.sample_columns()

    @classmethod
    def sample_columns(cls) -> tuple[str, ...]:
        """Row columns that identify one sample (one prompt): its rows (bins, heads) are averaged
        into one number before a sample counts as a value."""
        return ("context_length",) + tuple(k for k in cls.key_columns if k not in WITHIN_SAMPLE_KEYS)

    @classmethod
    def request_kinds(cls, options) -> frozenset[str]:
        """The request kinds the task sends with these options ("token_loss", "answer_score", "generate",
        "probe": ``evalkit.core.backend.REQUEST_KINDS``): a backend that cannot answer one is refused
        before anything loads."""
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        raise NotImplementedError

    def rows(self, sample: Sample, answer) -> list[dict[str, Any]]:
        """Rows for one sample: each a dict of key columns plus ``metric`` and ``value``."""
        raise NotImplementedError

    def summarize(self, frame):
        """The headline numbers per (attention, context_length), from the rows DataFrame."""
        raise NotImplementedError

    def derive(self, frame):
        """Rows computed from other rows once a run's rows are in (LongPPL's key tokens); stored with them."""
        return frame

    def provenance(self) -> dict[str, Any]:
        """What the manifest should record about the task's data (after ``samples``): how to rebuild it."""
        return {}

    def plot(self, frame, title: str, plots_dir: Path) -> list[Path]:
        return []
