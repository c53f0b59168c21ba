"""``report.md`` of a reference study: figures with 95% bands over seeds and prompts, the effective
context length per (positions, variant), and the paired Softmax-vs-SSMax comparison per length.

Every interval comes from ``evalkit.report.stats`` with the unit (training seed, trial) or
(training seed, window): rows of one prompt are never counted as independent, and neither are
the prompts of one trained model beyond what the seeds allow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.reference.study_layout import UNITS, StudySettings, learned, load_frames, pair_summaries, run_folder
from evalkit.reference.train import LEARNED_ACCURACY
from evalkit.report import stats

LINE = ["positions", "variant"]


def curve(frame: pd.DataFrame, task: str, metric: str, x: str = "context_length") -> pd.DataFrame:
    """Per (positions, variant, x): the estimate of ``metric`` with its 95% interval."""
    rows = frame[frame.metric == metric]
    return stats.estimates(rows, LINE + [x], UNITS[task]).sort_values(LINE + [x])


def effective_lengths(accuracy: pd.DataFrame) -> pd.DataFrame:
    """RULER's effective context length per (positions, variant), its interval from the accuracy bands."""
    rows = []
    for (positions, variant), part in accuracy.groupby(LINE, sort=False):
        part = part.sort_values("context_length")
        point = stats.effective_length(part.context_length, part.value, stats.RULER_THRESHOLD)
        low, high = stats.effective_length_interval(
            part.context_length, part.ci_low, part.ci_high, stats.RULER_THRESHOLD
        )
        rows.append(
            {
                "positions": positions,
                "variant": variant,
                "effective_length": point,
                "ci_low": low,
                "ci_high": high,
                "threshold": stats.RULER_THRESHOLD,
            }
        )
    return pd.DataFrame(rows)


NAMES = {"softmax": "softmax", "ssmax": "SSMax", "multiscreen": "Multiscreen"}


def comparisons(arches) -> list[tuple[str, str]]:
    """(baseline, candidate) pairs in the study: SSMax vs softmax, Multiscreen vs each of them."""
    order = [a for a in ("softmax", "ssmax", "multiscreen") if a in arches]
    return [(b, c) for i, c in enumerate(order) for b in order[:i]]


def paired(
    frame: pd.DataFrame, task: str, metric: str, baseline: str = "softmax", candidate: str = "ssmax"
) -> pd.DataFrame:
    """candidate - baseline per (positions, length), prompt by prompt, pooled over seeds (paired t
    on per-unit mean differences, or exact McNemar with one prompt per unit). Layers and heads pair
    up within one architecture; against Multiscreen (tiles, not heads) each prompt's mean over its
    layers and heads is paired instead."""
    rows = frame[(frame.metric == metric) & frame.variant.isin([baseline, candidate])]
    keys = ["positions", "train_seed", "context_length", "depth", "trial"]
    within = "multiscreen" not in (baseline, candidate)
    per_unit = ("layer", "head", "sample", "position_bin") if within else ("sample", "position_bin")
    keys += [k for k in per_unit if k in rows.columns and rows[k].notna().any()]
    keys = [k for k in dict.fromkeys(keys) if k in rows.columns]
    wide = rows.pivot_table(index=keys, columns="variant", values="value", aggfunc="mean").reset_index()
    out = []
    if baseline not in wide.columns or candidate not in wide.columns:
        return pd.DataFrame(out)
    for (positions, length), part in wide.groupby(["positions", "context_length"]):
        part = part.dropna(subset=[baseline, candidate])
        if part.empty:
            continue
        units = stats.unit_keys(part, UNITS[task])
        d = stats.paired_difference(part[baseline], part[candidate], units)
        out.append(
            {
                "positions": positions,
                "context_length": int(length),
                "baseline": baseline,
                "candidate": candidate,
                "baseline_mean": part[baseline].mean(),
                "candidate_mean": part[candidate].mean(),
                "delta": d.delta,
                "ci_low": d.ci_low,
                "ci_high": d.ci_high,
                "p_value": d.p_value,
                "beyond_noise": d.beyond_noise,
                "units": d.units,
                "test": d.test,
            }
        )
    return pd.DataFrame(out)


def per_seed_comparisons(out: Path, settings: StudySettings) -> pd.DataFrame:
    """compare_runs on each seed's needle runs, per (baseline, candidate) arm pair: greedy accuracy rows."""
    from evalkit.report.compare import compare_runs

    rows = []
    for baseline, candidate in comparisons(settings.arches):
        for positions in settings.positions:
            for seed in settings.seeds:
                rows += _per_seed(out, positions, seed, baseline, candidate, compare_runs)
    return pd.DataFrame(rows)


def _per_seed(out: Path, positions: str, seed: int, baseline: str, candidate: str, compare_runs) -> list[dict]:
    c = compare_runs(
        run_folder(out, positions, seed, baseline, "needle"), run_folder(out, positions, seed, candidate, "needle")
    )
    return [
        {
            "positions": positions,
            "seed": seed,
            "context_length": int(r.context_length),
            "baseline": baseline,
            "candidate": candidate,
            "baseline_mean": r.baseline,
            "candidate_mean": r.candidate,
            "delta": r.delta,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "p_value": r.p_value,
            "beyond_noise": bool(r.beyond_noise),
        }
        for r in c.rows[c.rows.metric == "greedy_correct"].itertuples()
    ]


def _figure(
    curves: pd.DataFrame,
    path: Path,
    ylabel: str,
    title: str,
    train_lengths: dict[str, int],
    x: str = "context_length",
    ylim=None,
    xlabel: str | None = None,
) -> Path:
    from evalkit.report import draw

    fig, ax = draw.figure(7.5, 4.4)
    styles = {"rope": "-", "nope": ":", "irope": "--"}
    for (positions, variant), part in curves.groupby(LINE, sort=False):
        draw.line_with_band(
            ax,
            part[x].astype(float),
            part.value,
            part.ci_low,
            part.ci_high,
            draw.variant_colour(variant),
            styles.get(positions, "-."),
            "o" if variant == "softmax" else "s",
            label=f"{positions} {variant}",
        )
    draw.length_axis(ax, sorted(curves[x].unique()), ylim)
    if xlabel:
        ax.set_xlabel(xlabel)
    for row, train in enumerate(sorted(set(train_lengths.values()))):
        draw.mark_training_length(ax, sorted(curves[x].unique()), train, row=row)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}\n{draw.n_caption(curves.n, curves.units)}; 95% bands", fontsize=9)
    return draw.save(fig, path)


def _interval(v, lo, hi, digits: int = 3) -> str:
    if pd.isna(v):
        return "-"
    return (
        f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if not (pd.isna(lo) or pd.isna(hi)) else f"{v:.{digits}f}"
    )


def _wide(curves: pd.DataFrame, x: str = "context_length") -> str:
    table = curves.assign(cell=[_interval(v, lo, hi) for v, lo, hi in zip(curves.value, curves.ci_low, curves.ci_high)])
    table = table.pivot_table(index=LINE, columns=x, values="cell", aggfunc="first")
    header = "| positions | variant | " + " | ".join(str(int(c)) for c in table.columns) + " |"
    lines = [header, "|" + "---|" * (len(table.columns) + 2)]
    for (positions, variant), row in table.iterrows():
        lines.append(f"| {positions} | {variant} | " + " | ".join(str(v) for v in row.values) + " |")
    return "\n".join(lines)


def _markdown(frame: pd.DataFrame, columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if pd.isna(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame[columns].itertuples(index=False)]
    return "\n".join(lines)


def _parameters(path: str) -> str:
    """Parameter count of a saved checkpoint, read from its safetensors header (no weights loaded)."""
    import json
    import struct

    try:
        with open(Path(path) / "model.safetensors", "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    except OSError:
        return "-"
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for size in entry["shape"]:
                count *= size
            total += count
    return f"{total:,}"


def _paired_sections(pooled: dict, per_seed: pd.DataFrame, baseline: str, candidate: str, unlearned) -> list[str]:
    """The report's section for one (baseline, candidate) comparison: pooled tables per metric, the
    per-seed needle table, and the lengths where accuracy differs beyond noise."""
    label = f"{NAMES[candidate]} - {NAMES[baseline]}"
    column = f"{label} [95%]"
    lines = [f"## {label}, paired prompt by prompt", ""]
    if "multiscreen" in (baseline, candidate):
        lines += [
            "Focus metrics are paired per prompt as the mean over layers and heads (tiles): a tile is not a head.",
            "",
        ]
    for (metric, b, c), table in pooled.items():
        if (b, c) != (baseline, candidate) or table.empty:
            continue
        table = table.assign(
            **{column: [_interval(d, lo, hi) for d, lo, hi in zip(table.delta, table.ci_low, table.ci_high)]},
            **{baseline: table.baseline_mean, candidate: table.candidate_mean},
        )
        lines += [
            f"### {metric} (pooled over seeds)",
            "",
            _markdown(
                table,
                ["positions", "context_length", baseline, candidate, column, "p_value", "beyond_noise", "units"],
            ),
            "",
        ]
    mine = per_seed[(per_seed.baseline == baseline) & (per_seed.candidate == candidate)] if len(per_seed) else per_seed
    if len(mine):
        mine = mine.assign(
            **{column: [_interval(d, lo, hi) for d, lo, hi in zip(mine.delta, mine.ci_low, mine.ci_high)]},
            **{baseline: mine.baseline_mean, candidate: mine.candidate_mean},
        )
        lines += [
            f"### Needle accuracy per seed (`evalkit compare`, {baseline} baseline, {candidate} candidate)",
            "",
            _markdown(
                mine, ["positions", "seed", "context_length", baseline, candidate, column, "p_value", "beyond_noise"]
            ),
            "",
        ]
    beyond = pooled.get(("greedy_correct", baseline, candidate), pd.DataFrame())
    beyond = beyond[beyond.beyond_noise] if not beyond.empty else beyond
    lines += [f"### What the intervals support ({label})", ""]
    if beyond.empty:
        lines.append(
            f"No needle-accuracy difference between {NAMES[baseline]} and {NAMES[candidate]} is beyond noise at "
            "any length."
        )
    for r in beyond.itertuples():
        lines.append(
            f"- {r.positions}, {r.context_length} tokens: {NAMES[candidate]} "
            f"{'above' if r.delta > 0 else 'below'} {NAMES[baseline]} by "
            f"{r.delta:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}] (p = {r.p_value:.2g})"
            + (
                " (a model that did not learn the lookup is pooled in)"
                if any(p == r.positions for p, _ in unlearned)
                else ""
            )
        )
    return lines + [""]


def write_report(out: Path, settings: StudySettings, log: Callable[[str], Any] = print) -> Path:
    out = Path(out)
    frames = load_frames(out, settings)
    summaries = pair_summaries(out, settings)
    train_lengths = {p: settings.recipe_for(p).train_length for p in settings.positions}
    figures, tables = out / "figures", out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    seeds = ", ".join(str(s) for s in settings.seeds)

    accuracy = curve(frames["needle"], "needle", "greedy_correct")
    mass = curve(frames["focus"], "focus", "needle_mass")
    entropy = curve(frames["focus"], "focus", "entropy_norm")
    ppl = frames["perplexity"]
    longest = ppl.context_length.max()
    by_position = curve(
        ppl[(ppl.context_length == longest) & ppl.position_end.notna()], "perplexity", "nll", x="position_end"
    )
    lengths = effective_lengths(accuracy)
    pooled = {
        (m, b, c): paired(frames[t], t, m, b, c)
        for b, c in comparisons(settings.arches)
        for t, m in (
            ("needle", "greedy_correct"),
            ("needle", "answer_logprob"),
            ("focus", "needle_mass"),
            ("focus", "entropy_norm"),
        )
    }
    per_seed = per_seed_comparisons(out, settings)
    for name, table in (
        ("needle_accuracy", accuracy),
        ("needle_mass", mass),
        ("entropy_norm", entropy),
        ("loss_by_position", by_position),
        ("effective_length", lengths),
        ("per_seed_needle", per_seed),
        *(
            (f"paired_{m}" + ("" if (b, c) == ("softmax", "ssmax") else f"_{c}_vs_{b}"), t)
            for (m, b, c), t in pooled.items()
        ),
    ):
        table.to_csv(tables / f"{name}.csv", index=False)

    what = f"seeds {seeds}; mean over prompts and seeds"
    _figure(
        accuracy,
        figures / "needle_accuracy.png",
        "greedy accuracy",
        f"Needle (ABCDigits) accuracy vs length, {what}",
        train_lengths,
        ylim=(-0.02, 1.02),
    )
    _figure(
        mass,
        figures / "needle_mass.png",
        "attention mass on the needle",
        f"Attention on the needle (all heads), {what}",
        train_lengths,
    )
    _figure(
        entropy,
        figures / "entropy_norm.png",
        "normalized attention entropy",
        f"Attention entropy / log n (all heads), {what}",
        train_lengths,
    )
    _figure(
        by_position,
        figures / "loss_by_position.png",
        "NLL (nats per token)",
        f"Loss by position in {int(longest)}-token ABCDigits windows, {what}",
        train_lengths,
        x="position_end",
        xlabel="position (end of log2 bin)",
    )

    lines = [
        f"# Reference study: {' vs '.join(NAMES[a] for a in settings.arches)}, {', '.join(settings.positions)}",
        "",
        f"Recipe `{settings.recipe}`; seeds {seeds}; every model evaluated on the same prompts (run seed "
        f"{frames['needle'].seed.iloc[0]}). Intervals are 95%, the independent unit is (training seed, trial) for "
        f"needle "
        "and focus and (training seed, window) for perplexity (`evalkit.report.stats`).",
        "",
        "## Training",
        "",
        "| positions | seed | arm | recipe | held-out recall | parameters | SSMax s / w = inf tiles | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (positions, seed), s in summaries.items():
        for arm, v in s.get("variants", {}).items():
            lines.append(
                f"| {positions} | {seed} | {arm} | {s['recipe_fields']['name']} ({s['steps']} steps) | "
                f"{v['heldout_recall_accuracy']:.1%} | {_parameters(v['path'])} | "
                + (f"{s['ssmax_s']['mean']:.3f}" if arm == "ssmax" else "")
                + f" | {s['train_seconds'] / 60:.1f} (pair) |"
            )
        if "multiscreen" in s:
            m = s["multiscreen"]
            lines.append(
                f"| {positions} | {seed} | multiscreen | {m['recipe_fields']['name']} ({m['steps']} steps) | "
                f"{m['heldout_recall_accuracy']:.1%} | {m['parameters']:,} | {m['infinite_share']:.0%} | "
                f"{m['train_seconds'] / 60:.1f} |"
            )
    unlearned = [(p, s) for (p, s), summary in summaries.items() if not learned(summary)]
    lines += [
        "",
        (
            f"Held-out recall at the training length below {LEARNED_ACCURACY:.0%} in: "
            + ", ".join(f"{p} seed {s}" for p, s in unlearned)
            + ". These pairs compare learning, not length generalization; their numbers below say how far "
            "each model learned the lookup, not how it extrapolates."
        )
        if unlearned
        else f"Every model learned the lookup (held-out recall at the training length >= {LEARNED_ACCURACY:.0%}): "
        "every pair compares length generalization.",
    ]
    lines += [
        "",
        "## Needle accuracy vs length",
        "",
        "![needle accuracy](figures/needle_accuracy.png)",
        "",
        _wide(accuracy),
        "",
        "### Effective context length",
        "",
        f"The longest length whose accuracy stays at or above RULER's {stats.RULER_THRESHOLD} at it and every shorter "
        "length; the interval from the accuracy bands' ends (pessimistic, optimistic). `-`: even the training "
        "length is below.",
        "",
        "| positions | variant | effective length [95%] |",
        "|---|---|---|",
    ]
    for r in lengths.itertuples():
        fmt = lambda n: "-" if n is None or pd.isna(n) else str(int(n))  # noqa: E731
        lines.append(f"| {r.positions} | {r.variant} | {fmt(r.effective_length)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}] |")
    lines += [
        "",
        "## Attention on the needle and its entropy vs length",
        "",
        "![needle mass](figures/needle_mass.png)",
        "",
        _wide(mass),
        "",
        "![entropy](figures/entropy_norm.png)",
        "",
        _wide(entropy),
        "",
        "## Loss by position beyond the training length",
        "",
        "![loss by position](figures/loss_by_position.png)",
        "",
        _wide(by_position, x="position_end"),
        "",
    ]
    for baseline, candidate in comparisons(settings.arches):
        lines += _paired_sections(pooled, per_seed, baseline, candidate, unlearned)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    log(f"wrote {path}")
    return path
