"""Run folders as compare and gate read them: rows, manifest, completeness, selections and units.

A *sample* is one prompt (its heads and position bins averaged first); a *unit* is the task's
independent unit (``Task.unit_columns``: a needle trial under ``--draw trial``, a perplexity
window), with the run's seed on top. Samples pair prompt by prompt; units cluster the noise.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ConfigError, ResultsError, did_you_mean
from evalkit.core.metrics import Metric, declared

WITHIN_SAMPLE_KEYS = {"position_bin", "layer", "head"}  # parts of one prompt, averaged first
NOT_PROVENANCE = {"run_id", "run", "seed", "generated", "position_end", "scored_tokens", "step", "series"}
SELECTOR_KEYS = ("attention", "model", "run", "seed", "step", "series")  # step, series: evalkit track's runs


@dataclass(frozen=True)
class Run:
    folder: Path
    frame: pd.DataFrame  # the rows, plus ``run`` (folder name) and ``seed`` (the row's, else the manifest's)
    task: str
    keys: tuple[str, ...]  # the task's key columns: those between context_length and metric
    manifest: dict

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def metrics(self) -> dict[str, Metric]:
        """What each row metric means: the manifest's declaration, else the task class's (older runs)."""
        return declared(self.manifest, self.task)


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    path = folder / "results.parquet"
    if not folder.is_dir():
        raise ResultsError(
            f"run folder {folder} does not exist", "pass a folder written by `evalkit run ... --out DIR`"
        )
    if not path.is_file():
        raise ResultsError(
            f"{folder} has no results.parquet", "pass an evalkit run folder; finish an interrupted run with --resume"
        )
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a torn or foreign file
        raise ResultsError(
            f"{path} cannot be read ({type(exc).__name__})", "rerun the task or restore the file"
        ) from None
    columns = list(frame.columns)
    missing = [c for c in ["task", "attention", "context_length", "metric", "value"] if c not in columns]
    if missing or frame.empty:
        what = f"lacks column(s) {', '.join(missing)}" if missing else "holds no rows"
        raise ResultsError(f"{path} {what}", "pass a folder written by `evalkit run`")
    tasks = frame["task"].dropna().unique()
    if len(tasks) != 1:
        raise ResultsError(f"{path} mixes tasks {', '.join(map(str, tasks))}", "compare runs of one task each")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}  # completeness() reports it: a run that cannot show it finished never passes
    keys = tuple(columns[columns.index("context_length") + 1 : columns.index("metric")])
    frame = frame.assign(run=folder.name)
    if "seed" not in frame.columns:
        frame["seed"] = manifest.get("seed")
    for key in ("step", "series"):  # a run of a checkpoint series (evalkit track, the training callback)
        if key not in frame.columns:
            frame[key] = manifest.get(key)
    return Run(folder, frame, str(tasks[0]), keys, manifest)


def find_runs(folder: str | Path) -> list[Run]:
    """The run in ``folder``, or every run below it (a sweep's out/<model>/<task>[-seedN]/)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / "results.parquet").exists():
        return [load_run(folder)]
    found = sorted(p.parent for p in folder.glob("**/results.parquet") if len(p.relative_to(folder).parts) <= 4)
    if not found:
        raise ResultsError(
            f"{folder} holds no run (no results.parquet in it or below it)",
            "pass a folder written by `evalkit run` or `evalkit sweep`",
        )
    return [load_run(p) for p in found]


def completeness(run: Run) -> str | None:
    """Why a run cannot be trusted to be whole, or None when its manifest says it finished every sample."""
    m = run.manifest
    if not m:
        return f"run {run.folder} has no readable manifest.json, so nothing shows that it finished"
    planned = m.get("samples")
    variants = len(m.get("attention") or []) or 1
    finished = m.get("finished_samples")
    expected = m.get(
        "planned_answers", planned * variants if planned is not None else None
    )  # some samples run under one variant
    count = f" ({finished} of {expected} samples finished)" if expected is not None and finished is not None else ""
    if m.get("interrupted"):
        return f"run {run.folder} was interrupted{count}; finish it with `evalkit run ... --resume`"
    if "interrupted" not in m:
        return f"run {run.folder} did not finish (its manifest has no end record: still running, or killed)"
    if count and finished < expected:
        return f"run {run.folder} is incomplete{count}; finish it with `evalkit run ... --resume`"
    return None


def metrics_of(runs: list[Run]) -> dict[str, Metric]:
    """The declared metrics of several runs of one task (a later run's declaration of a name wins)."""
    out: dict[str, Metric] = {}
    for run in runs:
        out.update(run.metrics)
    return out


def compared_metrics(metrics: dict[str, Metric]) -> set[str] | None:
    """The row metrics compare makes cells of; None (every metric) for a task that declares none."""
    return {m.name for m in metrics.values() if m.compared} or None


# -- selections ----------------------------------------------------------------------------------


def parse_selector(items: list[str] | None, side: str) -> dict[str, set[str]]:
    """["attention=softmax", "seed=1,2"] -> {"attention": {"softmax"}, "seed": {"1", "2"}}."""
    out: dict[str, set[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise ConfigError(f"bad --{side} {item!r}", "write KEY=VALUE, e.g. --baseline attention=softmax")
        if key not in SELECTOR_KEYS:
            raise ConfigError(
                f"bad --{side} key {key!r}: {did_you_mean(key, SELECTOR_KEYS)}",
                f"use one of {', '.join(SELECTOR_KEYS)}",
            )
        out.setdefault(key, set()).update(v.strip() for v in value.split(",") if v.strip())
    return out


def describe_selector(selector: dict[str, set[str]]) -> str:
    return " ".join(f"{k}={','.join(sorted(v))}" for k, v in selector.items())


def select(runs: list[Run], selector: dict[str, set[str]], side: str) -> pd.DataFrame:
    frame = pd.concat([r.frame for r in runs], ignore_index=True)
    for key, wanted in selector.items():
        have = frame[key].astype(str)
        if not have.isin(wanted).any():
            known = sorted(have.unique())
            raise ConfigError(
                f"--{side} {key}={','.join(sorted(wanted))} matches no rows: {did_you_mean(next(iter(wanted)), known)}",
                f"the runs hold {key}: {', '.join(known)}",
            )
        frame = frame[have.isin(wanted)]
    return frame


# -- samples and units ---------------------------------------------------------------------------


def unit_columns(run: Run) -> tuple[str, ...]:
    """The task's independent-unit columns for this run's options (``Task.unit_columns``)."""
    from evalkit.core.registry import get_task

    try:
        task_cls = get_task(run.task)
    except ConfigError:  # a plugin that is not installed here: each sample is its own unit
        return ("context_length",) + tuple(k for k in run.keys if k not in WITHIN_SAMPLE_KEYS)
    try:
        options = recorded_options(task_cls, run.manifest)
    except (TypeError, ValueError):
        options = task_cls.Options()
    return tuple(task_cls.unit_columns(options))


def recorded_options(task_cls, manifest: dict):
    """The task options a run's manifest records, as the task's Options (keys this version lacks dropped)."""
    names = {f.name for f in dataclasses.fields(task_cls.Options)}
    return task_cls.Options(**{k: v for k, v in (manifest.get("task_options") or {}).items() if k in names})


def samples(
    frame: pd.DataFrame, keys: tuple[str, ...], units: tuple[str, ...], metrics: set[str] | None
) -> pd.DataFrame:
    """One row per (attention, model, context_length, metric, prompt): the prompt's value (heads and
    bins averaged), ``sample`` (its id, seed included), ``unit`` (its cluster id) and ``prov`` (what
    the prompt was made of: offset, answer, needle position...)."""
    if "position_bin" in frame.columns:  # per-position curves: the sample's mean_nll row sums them up
        frame = frame[frame["position_bin"].isna()]
    if metrics is not None and metrics & set(frame["metric"]):
        frame = frame[frame["metric"].isin(metrics)]
    sample_keys = ["seed"] + [k for k in keys if k not in WITHIN_SAMPLE_KEYS]
    cell = ["attention", "model", "context_length", "metric"]
    value_at = list(frame.columns).index("value")
    prov = [c for c in frame.columns[value_at + 1 :] if c not in NOT_PROVENANCE and c not in keys]
    grouped = frame.groupby(cell + sample_keys, dropna=False, sort=True)
    out = grouped["value"].mean().reset_index()
    # the unit first: a task's "sample" column may be a unit column, which the joined sample id replaces
    present = [c for c in units if c in out.columns]  # none (a model-free run): each sample is its own unit
    # a unit column that is provenance, not a key (lm-eval's document): taken per sample, as summary.csv does
    recorded = [c for c in units if c not in out.columns and c in frame.columns]
    by_unit = out.assign(**{c: grouped[c].first().to_numpy() for c in recorded})
    present += recorded
    unit = _joined(by_unit, ["seed"] + present) if present else None
    out["sample"] = _joined(out, ["context_length"] + sample_keys)
    out["unit"] = unit if unit is not None else out["sample"]
    out["prov"] = _joined(grouped[prov].first().reset_index(), prov).to_numpy() if prov else ""
    return out


def _joined(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """The columns' values as one "a|b|c" id per row (column-wise: a row-wise join is 100x slower)."""
    text = pd.Series("", index=frame.index, dtype=object)
    for k, column in enumerate(columns):
        # map(str), not astype(str): pandas 3's str dtype keeps a missing value missing, and NaN != NaN
        text = text + ("|" if k else "") + frame[column].map(str).astype(object)
    return text


def tokenizer_of(manifest: dict) -> str | None:
    """What identifies the tokenizer in a manifest (loading.tokenizer_identity), or None: its content
    hash and vocabulary size; without a hash (older runs), vocabulary size and name_or_path."""
    tok = (manifest.get("model") or {}).get("tokenizer")
    if not tok:
        return None
    keys = ("class", "vocab_size", "content_hash") if tok.get("content_hash") else ("vocab_size", "name_or_path")
    return ", ".join(f"{k} {tok.get(k)}" for k in keys)


def option_differences(base: list[Run], cand: list[Run]) -> list[str]:
    """Task options (grid extents aside) and tokenizers that differ between the two sides' runs."""
    from evalkit.core.registry import get_task

    try:
        task_cls = get_task(base[0].task)
        grid = {f.name for f in dataclasses.fields(task_cls.Options) if f.metadata.get("grid")}
    except ConfigError:
        grid = set()
    problems = []
    for b in base:
        for c in cand:
            bo, co = b.manifest.get("task_options") or {}, c.manifest.get("task_options") or {}
            differ = [k for k in sorted(set(bo) | set(co)) if k not in grid and bo.get(k) != co.get(k)]
            if differ:
                problems.append(
                    "task options differ: "
                    + "; ".join(f"{k} ({bo.get(k)!r} in {b.name} vs {co.get(k)!r} in {c.name})" for k in differ)
                )
            bt, ct = tokenizer_of(b.manifest), tokenizer_of(c.manifest)
            if bt and ct and bt != ct:
                problems.append(f"tokenizers differ: {bt} in {b.name} vs {ct} in {c.name}")
    return list(dict.fromkeys(problems))


def device_class(device) -> str | None:
    """cpu, cuda, mps...: the kernels a run used differ by class, not by card."""
    return None if not device else str(device).split(":")[0].lower()


def setup_differences(base: list[Run], cand: list[Run]) -> list[str]:
    """dtype and device class that differ between the two sides' runs (auto dtype is bf16 on CUDA and
    fp32 on CPU, so a CPU baseline vs a GPU candidate differs in both)."""
    problems = []
    for b in base:
        for c in cand:
            bm, cm = b.manifest.get("model") or {}, c.manifest.get("model") or {}
            if bm.get("dtype") and cm.get("dtype") and bm["dtype"] != cm["dtype"]:
                problems.append(
                    f"dtype differs: {bm['dtype']} in {b.name} vs {cm['dtype']} in {c.name} "
                    "(--allow-dtype-change if you mean it)"
                )
            bd, cd = device_class(bm.get("device")), device_class(cm.get("device"))
            if bd and cd and bd != cd:
                problems.append(f"device class differs: {bd} in {b.name} vs {cd} in {c.name}")
    return list(dict.fromkeys(problems))
