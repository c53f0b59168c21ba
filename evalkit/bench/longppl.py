"""``evalkit bench longppl``: what ``--metric longppl`` costs over plain perplexity, end to end.

Both contenders are the full ``evalkit run perplexity`` on one loaded model (results written to a
scratch folder, figures off), taking turns in every round (``evalkit.bench.run_rounds``). LongPPL adds
only the evaluator's short-context passes (``longppl.short_windows``: about (L - short) / stride - 1
windows of short + stride tokens per window of L); the full-context pass is shared with perplexity.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

from evalkit.bench.timing import Mode, run_rounds


def bench_longppl(
    model: str,
    lengths: str,
    device: str,
    dtype: str,
    out: str | None = None,
    samples: int = 1,
    short_context: str = "4k",
    short_stride: str = "1k",
    seconds: float = 0.0,
    rounds: int | None = None,
    dataset: str | None = None,
):
    """Table (one row per metric) of seconds per run, tokens computed, and the cost of LongPPL over perplexity."""
    import pandas as pd

    from evalkit.core.grid import parse_length, parse_lengths
    from evalkit.report.longppl import short_context_tokens
    from evalkit.run.evaluate import RunConfig, execute, load_for

    longest = max(parse_lengths(lengths))
    base = RunConfig(
        task="perplexity",
        model=model,
        attention=({"name": "softmax"},),
        device=device,
        dtype=dtype,
        quiet=True,
        plots=False,
        task_options={
            "lengths": lengths,
            "samples": samples,
            "short_context": short_context,
            "short_stride": short_stride,
            **({"dataset": dataset} if dataset else {}),
        },
    )
    backend = load_for(base, log=lambda *a: None)
    scratch = Path(tempfile.mkdtemp(prefix="evalkit-bench-longppl-"))
    runs = itertools.count()
    extra = short_context_tokens(longest, parse_length(short_context), parse_length(short_stride))

    def mode(metric: str, computed: int) -> Mode:
        def call():
            config = replace(
                base, task_options={**base.task_options, "metric": metric}, out=str(scratch / f"{metric}-{next(runs)}")
            )
            execute(config, backend=backend)

        return Mode(metric, call, 1, computed * samples, (longest - 1) * samples)

    modes = [mode("perplexity", longest), mode("longppl", longest + extra)]
    per_call = run_rounds(modes, backend.device, seconds, rounds)
    rows = [
        {
            "model": model,
            "lengths": lengths,
            "samples": samples,
            "short_context": short_context,
            "short_stride": short_stride,
            "metric": m.label,
            "seconds_per_run": round(per_call[m.label], 3),
            "tokens_computed": m.tokens_computed,
            "tokens_vs_perplexity": round(m.tokens_computed / modes[0].tokens_computed, 3),
            "time_vs_perplexity": round(per_call[m.label] / per_call["perplexity"], 3),
        }
        for m in modes
    ]
    frame = pd.DataFrame(rows)
    frame.attrs["caption"] = (
        f"evalkit bench longppl: run perplexity --lengths {lengths} --samples {samples}, plain vs "
        f"--metric longppl (short context {short_context}, stride {short_stride}), median of the rounds"
    )
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(out) / "bench_longppl.csv", index=False)
    return frame
