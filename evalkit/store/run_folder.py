"""Reading a run folder back: the one ``Run``, the one ``load_run`` and the one completeness rule.

Everything that reads a run (the Python API, compare, gate, plot, track, the training callback,
the reference study) reads it here, so they agree on what a run holds and on whether it finished.
A folder written by an older evalkit (a manifest without the newer keys) loads all the same.

Completeness: a run is complete when its manifest has the end record a run writes when it stops
(``interrupted`` present), says it was not interrupted, and counts at least as many finished
answers as it planned. An *answer* is one sample under one attention variant; a sample marked
``first_variant_only`` (LongPPL's evaluator passes) runs under the first variant only, so the plan
is ``planned_answers`` (written since LongPPL came in), else samples x variants (every sample ran
under every variant before).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.store.results import LOCK, MANIFEST

ROWS, SUMMARY = "results.parquet", "summary.csv"
# rows a folder must have to be an evalkit run (run_id and model aside: hand-made folders lack them)
NEEDED_COLUMNS = ("task", "attention", "context_length", "metric", "value")
RUN_LABELS = ("seed", "step", "series")  # manifest facts compare selects on, as row columns


@dataclass(frozen=True)
class Completeness:
    """Whether a run finished everything it planned, and if not, why (one line for a report)."""

    ended: bool  # the manifest has its end record (written when a run stops, whole or interrupted)
    interrupted: bool
    planned: int | None  # answers planned: each sample under each variant it runs under
    finished: int | None  # answers finished
    problem: str | None  # why the run cannot be trusted to be whole; None when it is complete

    @property
    def complete(self) -> bool:
        return self.problem is None


def planned_answers(manifest: dict) -> int | None:
    """Answers a run planned: ``planned_answers``, else samples x variants (runs written before
    first-variant-only samples existed ran every sample under every variant)."""
    if manifest.get("planned_answers") is not None:
        return int(manifest["planned_answers"])
    samples = manifest.get("samples")
    return None if samples is None else int(samples) * (len(manifest.get("attention") or []) or 1)


def completeness(manifest: dict, folder: str | Path = "") -> Completeness:
    """The one completeness rule (see the module docstring), from a run's manifest."""
    where = f"run {folder}" if str(folder) else "the run"
    planned, finished = planned_answers(manifest), manifest.get("finished_samples")
    ended, interrupted = "interrupted" in manifest, bool(manifest.get("interrupted"))
    count = f" ({finished} of {planned} samples finished)" if planned is not None and finished is not None else ""
    if not manifest:
        problem = f"{where} has no readable {MANIFEST}, so nothing shows that it finished"
    elif interrupted:
        problem = f"{where} was interrupted{count}; finish it with `evalkit run ... --resume`"
    elif not ended:
        problem = f"{where} did not finish (its manifest has no end record: still running, or killed)"
    elif not count:
        problem = f"{where} records no sample counts ({MANIFEST} lacks samples or finished_samples)"
    elif finished < planned:
        problem = f"{where} is incomplete{count}; finish it with `evalkit run ... --resume`"
    else:
        problem = None
    return Completeness(ended, interrupted, planned, finished, problem)


@dataclass(frozen=True, repr=False, eq=False)
class Run:
    """One run folder read back: its tidy rows, summary, manifest and figures.

    ``rows`` is results.parquet as written; ``frame`` the same rows with the run's labels as
    columns (``run``: the folder name; ``seed``, ``step``, ``series`` from the manifest where the
    rows lack them), which compare and gate select from. ``summary`` is summary.csv (a folder
    without one gets its task's summary of the rows). ``completeness`` says whether it finished.
    """

    folder: Path
    rows: Any  # pandas DataFrame; None only for a non-zero rank of a distributed evaluate()
    manifest: dict
    figures: list[Path] = field(default_factory=list)
    scratch: Any = field(default=None, compare=False)  # the TemporaryDirectory holding an unsaved run

    # -- what the run is ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def task(self) -> str:
        """The task's name: the rows', else the manifest's."""
        if self.rows is not None and len(self.rows):
            return str(self.rows["task"].iloc[0])
        return str((self.manifest.get("config") or {}).get("task", ""))

    @property
    def model(self) -> str:
        if self.rows is not None and len(self.rows) and "model" in self.rows:
            return str(self.rows["model"].iloc[0])
        return str((self.manifest.get("model") or {}).get("name") or self.folder.name)

    @property
    def seed(self):
        return self.manifest.get("seed")

    @property
    def metrics(self) -> dict:
        """What each row metric means (``evalkit.core.metrics.Metric`` by name): the manifest's
        declaration, else the task class's (runs written before tasks declared their metrics)."""
        from evalkit.core.metrics import declared

        return declared(self.manifest, self.task)

    @property
    def variants(self) -> list[str]:
        """Attention variant labels in the run's order: the manifest's, else the rows'."""
        recorded = self.manifest.get("attention") or []
        if recorded:
            return [str(a.get("label") or a.get("name")) if isinstance(a, dict) else str(a) for a in recorded]
        return [] if self.rows is None else [str(v) for v in dict.fromkeys(self.rows["attention"])]

    @property
    def lengths(self) -> list[int]:
        if self.rows is None or not len(self.rows):
            return []
        return sorted(int(n) for n in self.rows["context_length"].dropna().unique())

    @property
    def keys(self) -> tuple[str, ...]:
        """The task's key columns: those between context_length and metric."""
        if self.rows is None:
            return ()
        columns = list(self.rows.columns)
        return tuple(columns[columns.index("context_length") + 1 : columns.index("metric")])

    # -- whether it finished --------------------------------------------------------------------

    @cached_property
    def completeness(self) -> Completeness:
        return completeness(self.manifest, self.folder)

    @property
    def complete(self) -> bool:
        return self.completeness.complete

    @property
    def interrupted(self) -> bool:
        return self.completeness.interrupted

    # -- derived tables -------------------------------------------------------------------------

    @cached_property
    def frame(self):
        """The rows with ``run`` (folder name) and the manifest's seed, step and series as columns."""
        frame = self.rows.assign(run=self.folder.name)
        for key in RUN_LABELS:  # seed: every row carries its own; step, series: evalkit track's runs
            if key not in frame.columns:
                frame[key] = self.manifest.get(key)
        return frame

    @cached_property
    def summary(self):
        """summary.csv; for a folder without one, its task's summary of the rows (None if it cannot be made)."""
        import pandas as pd

        path = self.folder / SUMMARY
        if path.is_file():
            try:
                return pd.read_csv(path)
            except (pd.errors.EmptyDataError, pd.errors.ParserError):
                pass
        if self.rows is None or not len(self.rows):
            return None
        try:
            return self.task_plugin.summarize(self.rows)
        except ConfigError:  # a plugin task that is not installed here
            return None

    @cached_property
    def task_plugin(self):
        """The run's Task, rebuilt from its manifest (options, seed, training length; no tokenizer):
        what summarizes its rows and names its units. Raises ConfigError for a task not installed."""
        from evalkit.core.registry import get_task
        from evalkit.core.task import TaskContext

        task_cls = get_task(self.task)
        context = TaskContext(None, None, True, self.manifest.get("seed", 0), training_length(self.manifest))
        return task_cls(recorded_options(task_cls, self.manifest), context)

    # -- keeping it -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Run:
        """Copy the run folder to ``path`` (new, or empty) and return the Run read from there.
        The rows keep their ``run_id``: it names the run, not the folder."""
        target = Path(path)
        if target.resolve() == self.folder.resolve():
            return self
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ResultsError(
                f"cannot save the run to {target}: it exists and is not an empty folder", "choose a new folder"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.folder, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK))
        return load_run(target, cls=type(self))

    def __repr__(self) -> str:
        # short on purpose: printing a Run in a notebook must not dump every row and the manifest
        lengths = self.lengths
        shown = ",".join(map(str, lengths)) if len(lengths) <= 6 else f"{lengths[0]}..{lengths[-1]} ({len(lengths)})"
        state = "complete" if self.complete else "incomplete: " + _why(self.completeness)
        rows = "?" if self.rows is None else len(self.rows)
        return (
            f"Run({str(self.folder)!r}, task={self.task}, model={self.model}, "
            f"variants={','.join(self.variants) or '-'}, lengths={shown or '-'}, rows={rows}, {state})"
        )


def _why(c: Completeness) -> str:
    if c.interrupted:
        return "interrupted"
    if not c.ended:
        return "no end record"
    if c.planned is not None and c.finished is not None:
        return f"{c.finished} of {c.planned} answers"
    return "no sample counts"


def load_run(path: str | Path, *, cls: type[Run] = Run) -> Run:
    """A run folder (written by ``evalkit run``, ``evaluate``, ``track``, ``Run.save``) back as a ``Run``.

    Raises ResultsError when the folder is missing or holds no readable evalkit rows. A missing or
    corrupt manifest loads as {} (the run is then incomplete: nothing shows that it finished).
    """
    import pandas as pd

    folder = Path(path)
    if not folder.is_dir():
        raise ResultsError(
            f"run folder {folder} does not exist", "pass a folder written by `evalkit run ... --out DIR`"
        )
    parquet = folder / ROWS
    if not parquet.is_file():
        raise ResultsError(
            f"{folder} is not an evalkit run folder (no {ROWS})",
            "pass a folder written by evalkit run, evalkit.evaluate or Run.save; finish an interrupted run with "
            "--resume",
        )
    try:
        rows = pd.read_parquet(parquet)
    except Exception as exc:  # pyarrow raises several types for a torn or foreign file
        raise ResultsError(
            f"{parquet} cannot be read ({type(exc).__name__})", "rerun the task or restore the file"
        ) from None
    missing = [c for c in NEEDED_COLUMNS if c not in rows.columns]
    if missing:
        raise ResultsError(f"{parquet} lacks column(s) {', '.join(missing)}", "pass a folder written by `evalkit run`")
    tasks = rows["task"].dropna().unique()
    if len(tasks) > 1:
        raise ResultsError(f"{parquet} mixes tasks {', '.join(map(str, tasks))}", "give one run folder per task")
    plots = folder / "plots"
    figures = sorted(plots.glob("*.png")) if plots.is_dir() else []
    return cls(folder, rows, read_manifest_or_empty(folder), figures)


def read_manifest_or_empty(folder: str | Path) -> dict:
    """The manifest, or {} when it is missing or unreadable (completeness then says so)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def run_folders(folder: str | Path, depth: int | None = None) -> list[Path]:
    """The run folder ``folder``, or every run folder below it (at most ``depth`` levels down), sorted."""
    folder = Path(folder)
    if (folder / ROWS).is_file():
        return [folder]
    found = (p.parent for p in folder.glob(f"**/{ROWS}"))
    return sorted(p for p in found if depth is None or len(p.relative_to(folder).parts) <= depth)


def recorded_options(task_cls, manifest: dict):
    """The task options a run's manifest records, as the task's Options (keys this version lacks dropped)."""
    names = {f.name for f in dataclasses.fields(task_cls.Options)}
    try:
        return task_cls.Options(**{k: v for k, v in (manifest.get("task_options") or {}).items() if k in names})
    except (TypeError, ValueError):  # recorded by another version with other types: the defaults
        return task_cls.Options()


def training_length(manifest: dict) -> int | None:
    """The checkpoint's own training length when it records one, else its position limit.

    A ``--train-length`` given for logn is an evaluation setting, not a fact about the model.
    """
    own = [
        a["train_length"]
        for a in manifest.get("attention") or []
        if isinstance(a, dict) and a.get("from_checkpoint") and a.get("train_length")
    ]
    model = manifest.get("model") or {}
    return own[0] if own else model.get("training_length") or model.get("max_position_embeddings")
