"""``evalkit bench focus``: the attention probe's overhead over a plain forward."""

from __future__ import annotations

import numpy as np

from evalkit.bench.timing import ROUNDS, timed, write_table


def bench_focus(model: str, lengths: str, device: str, dtype: str, seconds: float, out: str | None):
    """Overhead of the attention probe (every layer, last row) over a plain forward, per length."""
    import torch

    from evalkit.core.grid import parse_lengths
    from evalkit.core.requests import ProbeRequest
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.models.body import decoder_body
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.models.probe import run_probes

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype), log=print)
    stream = token_stream(load_corpus(), loaded.tokenizer)
    rows = []
    for length in parse_lengths(lengths):
        tokens = stream.tokens[:length]
        ids = torch.from_numpy(tokens)[None].to(loaded.device)
        request = ProbeRequest(tokens, (length - 1,), (length // 2, length // 2 + 16))

        def plain():
            with torch.inference_mode():
                decoder_body(loaded.model)(input_ids=ids, use_cache=False)

        def probed():
            run_probes(loaded.model, ids, [request])

        timings = {"plain": [], "probe": []}
        for _ in range(ROUNDS):  # alternate, so drifting load on a shared machine hits both alike
            for name, fn in (("plain", plain), ("probe", probed)):
                calls, elapsed = timed(fn, loaded.device, seconds / ROUNDS)
                timings[name].append(elapsed / calls)
        plain_s, probe_s = float(np.median(timings["plain"])), float(np.median(timings["probe"]))
        rows.append(
            {
                "context_length": length,
                "plain_forward_s": round(plain_s, 4),
                "probed_forward_s": round(probe_s, 4),
                "overhead": f"{100 * (probe_s / plain_s - 1):+.1f}%",
            }
        )
    return write_table(rows, loaded, out, "bench_focus.csv")
