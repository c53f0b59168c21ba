"""Runs as compare and gate read them (through ``evalkit.store.run_folder``): selections, samples and units.

A *sample* is one prompt (its heads and position bins averaged first); a *unit* is the task's
independent unit (``Task.unit_columns``: a needle trial under ``--draw trial``, a perplexity
window), with the run's seed on top. Samples pair prompt by prompt; units cluster the noise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ConfigError, ResultsError, did_you_mean
from evalkit.core.metrics import Metric
from evalkit.store.run_folder import Run, load_run, run_folders

WITHIN_SAMPLE_KEYS = {"position_bin", "layer", "head"}  # parts of one prompt, averaged first
NOT_PROVENANCE = {"run_id", "run", "seed", "generated", "position_end", "scored_tokens", "step", "series"}
SELECTOR_KEYS = ("attention", "model", "run", "seed", "step", "series")  # step, series: evalkit track's runs


def find_runs(folder: str | Path) -> list[Run]:
    """The run in ``folder``, or every run below it (a sweep's out/<model>/<task>[-seedN]/), each with rows."""
    folder = Path(folder)
    if not folder.is_dir():
        return [with_rows(load_run(folder))]  # raises: the folder does not exist
    found = run_folders(folder, depth=4)
    if not found:
        raise ResultsError(
            f"{folder} holds no run (no results.parquet in it or below it)",
            "pass a folder written by `evalkit run` or `evalkit sweep`",
        )
    return [with_rows(load_run(p)) for p in found]


def with_rows(run: Run) -> Run:
    """The run, if it has rows to compare (a run interrupted before its first sample has none)."""
    if not len(run.rows):
        raise ResultsError(f"{run.folder / 'results.parquet'} holds no rows", "pass a folder written by `evalkit run`")
    return run


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
    try:
        task = run.task_plugin
    except ConfigError:  # a plugin that is not installed here: each sample is its own unit
        return ("context_length",) + tuple(k for k in run.keys if k not in WITHIN_SAMPLE_KEYS)
    return tuple(task.unit_columns(task.options))


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
