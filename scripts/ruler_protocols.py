"""Side by side: RULER runs under different protocols (``--fill nvidia`` / ``--fill exact``), read from their
summary.csv files, as a markdown table (score [95% interval], n per cell) and a figure.

Usage: python scripts/ruler_protocols.py OUT.png RUN [RUN ...]  (the table goes to stdout). Runs of the same
protocol at different lengths (e.g. one run at 1k, one at 2k) are joined; the protocol and comparability label
come from each run's manifest. Nothing is recomputed: every number is the run's own summary row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def load(runs: list[str]) -> pd.DataFrame:
    frames = []
    for run in runs:
        manifest = json.loads((Path(run) / "manifest.json").read_text())
        summary = pd.read_csv(Path(run) / "summary.csv")
        summary["protocol"] = manifest["ruler"]["protocol"]
        summary["label"] = manifest["ruler"]["comparable"]
        frames.append(summary[pd.to_numeric(summary.context_length, errors="coerce").notna()])
    frame = pd.concat(frames, ignore_index=True)
    frame["context_length"] = frame.context_length.astype(int)
    return frame[frame.score.notna()]


def cell(row) -> str:
    return f"{row.score:.2f} [{row.score_ci_low:.2f}, {row.score_ci_high:.2f}] n={int(row.n)}"


def table(frame: pd.DataFrame) -> str:
    protocols = list(dict.fromkeys(frame.protocol))
    lengths = sorted(frame.context_length.unique())
    tasks = list(dict.fromkeys(t for t in frame.ruler_task if t != "average")) + ["average"]
    head = ["task"] + [f"{p} {n // 1024}k" if n % 1024 == 0 else f"{p} {n}" for n in lengths for p in protocols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        out = [f"**{task}**" if task == "average" else task]
        for n in lengths:
            for p in protocols:
                match = frame[(frame.ruler_task == task) & (frame.context_length == n) & (frame.protocol == p)]
                out.append(cell(match.iloc[0]) if len(match) else "")
        lines.append("| " + " | ".join(out) + " |")
    labels = {p: frame[frame.protocol == p].label.iloc[0] for p in protocols}
    return "\n".join(lines) + "\n\n" + "; ".join(f"`{p}`: {label}" for p, label in labels.items()) + "\n"


def figure(frame: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(frame.protocol))
    lengths = sorted(frame.context_length.unique())
    tasks = list(dict.fromkeys(t for t in frame.ruler_task if t != "average")) + ["average"]
    size = (max(4.2 * len(lengths), 6.5), 0.38 * len(tasks) + 2.4)
    fig, axes = plt.subplots(1, len(lengths), figsize=size, sharey=True, squeeze=False, layout="constrained")
    for ax, n in zip(axes[0], lengths):
        for k, p in enumerate(protocols):
            part = frame[(frame.context_length == n) & (frame.protocol == p)].set_index("ruler_task")
            ys, xs, lo, hi = [], [], [], []
            for i, task in enumerate(tasks):
                if task in part.index:
                    r = part.loc[task]
                    ys.append(i + (k - (len(protocols) - 1) / 2) * 0.3)
                    xs.append(r.score)
                    lo.append(r.score - r.score_ci_low)
                    hi.append(r.score_ci_high - r.score)
            label = f"--fill {p} ({frame[frame.protocol == p].label.iloc[0]})"
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, label=label)
        ns = frame[(frame.context_length == n) & (frame.ruler_task != "average")].n
        ax.set_title(f"length {n} (n = {int(ns.min())}-{int(ns.max())} per task)", fontsize=9)
        ax.set_xlim(-0.03, 1.03)
        ax.axvline(0.856, color="grey", lw=0.8, ls=":")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_xlabel("RULER score (95% interval)")
    axes[0][0].set_yticks(range(len(tasks)), tasks, fontsize=8)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", fontsize=8, title="95% intervals", title_fontsize=8)
    fig.suptitle(
        "RULER on SmolLM2-135M: NVIDIA's protocol vs evalkit's exact-length prompts\n"
        "(dotted line: RULER's 0.856 threshold)",
        fontsize=10,
    )
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    frame = load(sys.argv[2:])
    print(table(frame))
    figure(frame, sys.argv[1])
