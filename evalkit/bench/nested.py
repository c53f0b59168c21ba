"""``evalkit bench nested``: multi-length perplexity with nested windows vs independent windows.

Both contenders are the full ``evalkit run perplexity`` (``evaluate`` on the loaded model, results
written to a scratch folder, figures off), taking turns in every round (``evalkit.bench.perplexity.run_rounds``):
what a user gains from ``--windows nested`` on a grid such as ``--lengths 1k..32k``, end to end.
Scored tokens are the same for both; nested computes only the longest window of each sample.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

from evalkit.bench.timing import Mode, run_rounds


def bench_nested(
    model: str,
    lengths: str,
    device: str,
    dtype: str,
    out: str | None = None,
    samples: int = 1,
    seconds: float = 0.0,
    rounds: int | None = None,
    allow_extrapolation: bool = False,
):
    """Table (one row per window mode) of seconds per run, scored tokens/s, tokens computed and scored,
    and the speed-up of nested over independent."""
    import pandas as pd

    from evalkit.core.grid import parse_lengths
    from evalkit.run.evaluate import RunConfig, execute, load_for
    from evalkit.store.results import read_manifest

    sizes = parse_lengths(lengths)
    base = RunConfig(
        task="perplexity",
        model=model,
        attention=({"name": "softmax"},),
        device=device,
        dtype=dtype,
        allow_extrapolation=allow_extrapolation,
        quiet=True,
        plots=False,
        task_options={"lengths": lengths, "samples": samples},
    )
    backend = load_for(base, log=lambda *a: None)
    scratch = Path(tempfile.mkdtemp(prefix="evalkit-bench-nested-"))
    runs = itertools.count()
    used = {}

    def mode(windows: str, computed: int) -> Mode:
        def call():
            config = replace(
                base,
                task_options={**base.task_options, "windows": windows},
                out=str(scratch / f"{windows}-{next(runs)}"),
            )
            outcome = execute(config, backend=backend)
            used[windows] = (
                read_manifest(outcome.folder).get("windows", {}).get("used", windows)
            )  # nested may fall back

        return Mode(windows, call, 1, computed * samples, sum(sizes) * samples)

    modes = [mode("nested", max(sizes)), mode("independent", sum(sizes))]
    per_call = run_rounds(modes, backend.device, seconds, rounds)
    rows = [
        {
            "model": model,
            "lengths": lengths,
            "samples": samples,
            "windows": m.label,
            "windows_used": used[m.label],
            "seconds_per_run": round(per_call[m.label], 3),
            "scored_tokens_per_s": round(m.tokens_scored / per_call[m.label], 1),
            "tokens_computed": m.tokens_computed,
            "tokens_scored": m.tokens_scored,
            "speedup_vs_independent": round(per_call["independent"] / per_call[m.label], 3),
        }
        for m in modes
    ]
    frame = pd.DataFrame(rows)
    frame.attrs["caption"] = (
        f"evalkit bench nested: run perplexity --lengths {lengths} --samples {samples}, nested vs "
        f"independent windows, median of the rounds, the two taking turns in each"
    )
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(out) / "bench_nested.csv", index=False)
    return frame
