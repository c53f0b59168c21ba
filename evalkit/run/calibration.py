"""Calibration sweeps: one attention variant per parameter value, and which value was chosen, on what.

``--ssmax-s 0.3,0.4,0.5`` (or a list for any variant parameter) runs one variant per value,
labelled with it: ``ssmax(s=0.4)``. Choosing the best value by looking at the evaluation's own
numbers is an oracle (the score is optimistically biased), so the choice is always reported with
the data it was made on:

- no ``--calibrate-on``: chosen on the evaluation samples; every table and plot says
  "evaluation data (oracle)";
- ``--calibrate-on seed:7`` or ``dataset:PATH``: the same grid is run first on those samples (a
  sibling run folder ``<out>-calibration``), the value is chosen there and applied to the
  evaluation samples; the tables say "seed:7".

The score of a value is its task's declared headline metric (``score_metrics``) over every sample of the grid, a
sample's rows averaged first, with its interval from ``evalkit.report.stats`` over the task's
independent units. Ties go to the secondary metric, then to the value listed first.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError

# request key -> how the value is written in a label
SWEEPABLE = ("s", "b", "train_length", "attn_scale", "floor_scale", "beta", "original_length")
LENGTHS = ("train_length", "original_length")  # integers that accept 1k, 8k
ORACLE = "evaluation data (oracle)"
_LABEL = re.compile(r"^(?P<group>[^()]+)\((?P<values>[^()]+)\)$")


def parse_values(flag: str, value: Any, length: bool = False) -> list | None:
    """``"0.3,0.4"`` -> [0.3, 0.4]; one value -> [value]; None -> None. Lengths accept 1k."""
    if value is None:
        return None
    from evalkit.core.grid import parse_length

    parts = [p.strip() for p in str(value).split(",")]
    try:
        values = [parse_length(p) if length else float(p) for p in parts]
    except (ValueError, ConfigError):
        raise ConfigError(
            f"bad {flag} {value!r}",
            f"give a number or comma-separated numbers, e.g. {flag} {'512,1k' if length else '0.3,0.4,0.5'}",
        ) from None
    if len(set(values)) < len(values):
        raise ConfigError(f"{flag} {value!r} lists a value twice", "list each value once")
    if flag in POSITIVE_FLAGS and not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"bad {flag} {value!r}: {POSITIVE_FLAGS[flag]}", f"give positive numbers, e.g. {flag} 0.43")
    return values


# a scale that is zero or negative turns attention uniform or inverts it: never what SSMax means
POSITIVE_FLAGS = {"--ssmax-s": "the SSMax scale s multiplies log n, and s <= 0 flattens or inverts attention"}


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand(names: list[str], values: dict[str, list | None]) -> tuple[dict, ...]:
    """One request per variant and combination of the listed values of the parameters it takes;
    a variant that takes none of the swept parameters runs once."""
    from evalkit.attention.variants import PARAMETER_FLAGS, get_variant

    swept = {k: v for k, v in values.items() if v is not None and len(v) > 1}
    shared = {k: v[0] for k, v in values.items() if v is not None and len(v) == 1}

    for key in swept:
        if not any(name != "auto" and key in get_variant(name).parameters for name in names):
            raise ConfigError(
                f"{PARAMETER_FLAGS[key]} lists {len(swept[key])} values, but no variant in --attention "
                f"{','.join(names)} takes it",
                "name the variant to sweep, e.g. --attention softmax,ssmax",
            )
    requests = []
    for name in names:
        needs = [k for k in swept if k in get_variant(name).parameters] if name != "auto" else []
        if not needs:
            requests.append({"name": name, **shared})
            continue
        for combo in itertools.product(*(swept[k] for k in needs)):
            label = f"{name}({','.join(f'{k}={_text(v)}' for k, v in zip(needs, combo))})"
            requests.append({"name": name, **shared, **dict(zip(needs, combo)), "label": label})
    return tuple(requests)


def groups(labels) -> dict[str, list[str]]:
    """{variant: [its swept labels, in run order]} for variants run with two or more values."""
    found: dict[str, list[str]] = {}
    for label in labels:
        match = _LABEL.match(str(label))
        if match:
            found.setdefault(match["group"], []).append(str(label))
    return {g: ls for g, ls in found.items() if len(ls) > 1}


def parse_calibrate_on(text: str, task_cls) -> dict[str, Any]:
    """``seed:7`` -> {"seed": 7}; ``dataset:PATH`` -> {"dataset": PATH} (a task option)."""
    kind, _, value = str(text).partition(":")
    fix = "use --calibrate-on seed:N (other samples of the same grid) or dataset:PATH_OR_NAME"
    if kind == "seed":
        try:
            return {"seed": int(value)}
        except ValueError:
            raise ConfigError(f"bad --calibrate-on {text!r}: the seed must be an integer", fix) from None
    if kind == "dataset" and value:
        if "dataset" not in {f.name for f in dataclasses.fields(task_cls.Options)}:
            raise ConfigError(f"--calibrate-on {text}: task {task_cls.name} reads no --dataset", "use seed:N")
        return {"dataset": value}
    raise ConfigError(f"bad --calibrate-on {text!r}", fix)


def calibration_config(config, task_cls, folder: Path):
    """The run config of the calibration samples: the evaluation's, on other samples, one folder beside it."""
    change = parse_calibrate_on(config.calibrate_on, task_cls)
    if change.get("seed", -1) == config.seed or change.get("dataset", -1) == config.task_options.get("dataset"):
        raise ConfigError(
            f"--calibrate-on {config.calibrate_on} names the evaluation samples themselves",
            "give another seed or dataset, or drop --calibrate-on (the choice is then marked an oracle)",
        )
    out = str(folder.with_name(f"{folder.name}-calibration"))
    options = {**config.task_options, **({"dataset": change["dataset"]} if "dataset" in change else {})}
    return dataclasses.replace(
        config, seed=change.get("seed", config.seed), task_options=options, out=out, calibrate_on=None
    )


def score_metrics(task, present=None) -> list[tuple[str, bool]]:
    """(metric, higher is better) a value is ranked by: the task's declared headline metrics (one shown
    through exp by its source: perplexity by mean_nll), the first deciding, the others breaking ties;
    only those in ``present`` (the metrics a run wrote) where given."""
    from evalkit.core.metrics import exp_source

    declared = {m.name: m for m in type(task).metrics}
    out = []
    for m in declared.values():
        source = exp_source(declared, m.name) or m
        if m.headline and source.direction and (present is None or source.name in present):
            out.append((source.name, source.direction > 0))
    if not out:
        raise ConfigError(
            f"no calibration score for task {task.name!r}: it declares no headline metric with a direction",
            "sweep values on a task that declares one (needle, perplexity, focus, ruler)",
        )
    return list(dict.fromkeys(out))


def scores(frame, task) -> Any:
    """Per attention label: the score metrics over all samples, with 95% intervals (stats.estimates)."""
    import pandas as pd

    from evalkit.report import stats

    criteria = score_metrics(task, set(frame.metric))
    sample = [c for c in ("attention", *task.sample_columns(), "seed") if c in frame.columns]
    table = None
    for metric, _ in criteria:
        rows = frame[frame.metric == metric]
        rows = rows.groupby(sample, as_index=False, sort=False, dropna=False)["value"].mean()
        kind = "proportion" if task.metric(metric).kind == "binary" else "mean"
        e = stats.estimates(rows, ["attention"], task.unit_columns(task.options), kind=kind)
        e = e.rename(columns={"value": metric, "ci_low": f"{metric}_ci_low", "ci_high": f"{metric}_ci_high"})
        e = e.drop(columns=["method"])
        table = e if table is None else table.merge(e.drop(columns=["n", "units"]), on="attention", how="outer")
    return table if table is not None else pd.DataFrame()


def choose(frame, task, selected_on: str = ORACLE):
    """One row per swept label: group, value, score columns, selected (the best of its group), selected_on."""
    import pandas as pd

    found = groups(pd.unique(frame.attention))
    if not found:
        return None
    table = scores(frame, task)
    rows = []
    for group, labels in found.items():
        part = table.set_index("attention").reindex(labels).reset_index()
        criteria = score_metrics(task, set(frame.metric))
        key = [(m if up else f"-{m}") for m, up in criteria]
        ranked = part.assign(**{f"-{m}": -part[m] for m, up in criteria if not up})
        order = ranked.sort_values(key, ascending=False, kind="stable", na_position="last")
        best = order.attention.iloc[0]
        rows.append(
            part.assign(
                group=group,
                value=[_LABEL.match(a)["values"] for a in part.attention],
                selected=part.attention == best,
                selected_on=selected_on,
            )
        )
    columns = ["group", "attention", "value", "selected", "selected_on"]
    out = pd.concat(rows, ignore_index=True)
    return out[columns + [c for c in out.columns if c not in columns]]


def apply_choice(choice, frame, task):
    """The calibration samples' choice, with the evaluation samples' scores beside it."""
    evaluated = scores(frame, task)
    on_eval = evaluated.rename(columns={c: f"eval_{c}" for c in evaluated.columns if c != "attention"})
    renamed = choice.rename(
        columns={
            c: f"calibration_{c}"
            for c in choice.columns
            if c not in ("group", "attention", "value", "selected", "selected_on")
        }
    )
    return renamed.merge(on_eval, on="attention", how="left")


def mark_summary(summary, choice):
    """The summary with sweep (the variant a label belongs to), selected and selected_on columns."""
    if summary is None or "attention" not in summary or choice is None:
        return summary
    info = choice.set_index("attention")
    summary = summary.copy()
    summary["sweep"] = summary.attention.map(info.group)
    summary["selected"] = summary.attention.map(info.selected)
    summary["selected_on"] = summary.attention.map(info.selected_on)
    return summary


def finalize(outcome, task, choice=None, calibration_folder=None):
    """After a run: choose (on the evaluation rows unless ``choice`` came from calibration samples),
    then write calibration.csv, the marked summary, plots/calibration.png and the manifest entry."""
    from evalkit.store.results import atomic_write, atomic_write_text

    if (
        outcome.frame is None
        or outcome.interrupted
        or not len(outcome.frame)
        or not groups(set(outcome.frame.attention))
    ):
        return outcome
    if choice is None:
        choice = choose(outcome.frame, task)
    else:
        choice = apply_choice(choice, outcome.frame, task)
    folder = outcome.folder
    summary = mark_summary(outcome.summary, choice)
    atomic_write(folder / "calibration.csv", lambda tmp: choice.to_csv(tmp, index=False))
    if summary is not None:
        atomic_write(folder / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    plot = plot_choice(choice, task, folder / "plots" / "calibration.png")
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["calibration"] = {
        "selected_on": str(choice.selected_on.iloc[0]),
        "oracle": bool(choice.selected_on.iloc[0] == ORACLE),
        "calibration_run": str(calibration_folder) if calibration_folder else None,
        "score": [m for m, _ in score_metrics(task, _scored(choice))],
        "selected": {g: part.attention[part.selected].iloc[0] for g, part in choice.groupby("group", sort=False)},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
    return dataclasses.replace(outcome, summary=summary, plots=[*outcome.plots, plot])


def _scored(choice) -> set[str]:
    """The metrics a choice table scores (its columns, calibration_ prefix dropped)."""
    return {str(c).removeprefix("calibration_") for c in choice.columns}


def plot_choice(choice, task, path: Path) -> Path:
    """Score against the swept value, one panel per variant, the chosen value starred, the data it was chosen on in the
    title."""
    from evalkit.report import draw

    metric, higher = score_metrics(task, _scored(choice))[0]
    prefix = "calibration_" if f"calibration_{metric}" in choice else ""
    found = list(dict.fromkeys(choice.group))
    plt = draw.pyplot()
    fig, axes = plt.subplots(1, len(found), figsize=(max(5.5, 4.2 * len(found)), 4.0), squeeze=False)
    for ax, group in zip(axes[0], found):
        part = choice[choice.group == group]
        x = range(len(part))
        value, low, high = (part[f"{prefix}{metric}{s}"].to_numpy(float) for s in ("", "_ci_low", "_ci_high"))
        colour = draw.variant_colour(group)
        ax.errorbar(
            x,
            value,
            yerr=[value - low, high - value],
            color=colour,
            marker="o",
            capsize=3,
            label=f"on {'calibration samples' if prefix else 'evaluation samples'}",
        )
        if prefix and f"eval_{metric}" in part:
            ax.plot(
                x,
                part[f"eval_{metric}"].to_numpy(float),
                color=colour,
                ls="--",
                marker="s",
                alpha=0.6,
                label="on evaluation samples",
            )
        chosen = part.selected.to_numpy().nonzero()[0]
        ax.plot(
            chosen,
            value[chosen],
            marker="*",
            markersize=16,
            color="black",
            ls="none",
            label=f"selected on {part.selected_on.iloc[0]}",
        )
        ax.set_xticks(list(x), part.value.tolist(), rotation=20)
        ax.set_title(f"{group}: {metric} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("swept value")
        ax.legend(fontsize=7)
    n, units = (int(choice[f"{prefix}{c}"].max()) for c in ("n", "units"))
    fig.suptitle(
        f"calibration sweep, all lengths pooled\nn = {n} samples in {units} independent units per value; 95% intervals",
        fontsize=9,
    )
    return draw.save(fig, path)
