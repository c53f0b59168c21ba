"""``evalkit bench perplexity``: tokens/s and model-FLOP utilization of the token-loss path,
against a plain transformers ``labels=`` loop and lm-eval on the same windows."""

from __future__ import annotations

import numpy as np

from evalkit.bench.timing import (
    ROUNDS,
    TIMING,
    Mode,
    forward_flops_per_token,
    lm_eval_mode,
    measure_peak_tflops,
    peak_tflops,
    run_rounds,
    write_table,
)


def bench_perplexity(
    model: str,
    lengths: str,
    device: str,
    dtype: str,
    batch_tokens: int | None,
    seconds: float,
    peak: float | None,
    out: str | None,
    attention=None,
    probe_size: int | None = None,
):
    """Tokens/s of evalkit's batched token losses per attention variant, of a plain transformers
    ``labels=`` loop and of lm-eval (when installed), all taking turns in each round; MFU against
    ``peak`` TFLOP/s, or else against a matmul probe measured on the device."""
    import torch

    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.grid import parse_lengths
    from evalkit.core.requests import TokenLossRequest
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.data.windows import random_offsets
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.run.attention_flags import VariantRequest, resolve_variants
    from evalkit.store.manifest import device_description

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype), log=print)
    adapter = TransformersBackend(loaded)
    variants = resolve_variants(adapter, attention or [VariantRequest("softmax")])
    stream = token_stream(load_corpus(), loaded.tokenizer)
    budget = batch_tokens or adapter.batch_tokens()
    dtype_name = str(loaded.dtype).removeprefix("torch.")
    if peak:
        peak_source = "given (--peak-tflops)"
    else:
        peak = measure_peak_tflops(loaded.device, loaded.dtype, probe_size)
        sheet = peak_tflops(device_description(loaded.device), dtype_name)
        peak_source = "measured (matmul probe)" + (f"; data sheet {sheet:g}" if sheet else "")
    first = variants[0]
    rows = []
    for length in parse_lengths(lengths):
        batch = max(1, budget // length)
        windows = [stream.tokens[o : o + length] for o in random_offsets(stream, length, batch, seed=0, disjoint=False)]
        requests = [TokenLossRequest(w) for w in windows]
        ids = torch.from_numpy(np.stack(windows[:1])).to(loaded.device)  # (1, T): the batch-1 peers' window

        def plain():
            with torch.inference_mode():
                loaded.model(input_ids=ids, labels=ids).loss.item()

        modes = [
            Mode(
                v.label,
                lambda: adapter.token_losses(requests),
                batch,
                batch * length,
                batch * (length - 1),
                setup=lambda v=v: adapter.activate(v),
            )
            for v in variants
        ]
        modes.append(
            Mode(
                f"plain transformers ({first.label}, labels=, batch 1)",
                plain,
                1,
                length,
                length - 1,
                setup=lambda: adapter.activate(first),
            )
        )
        peer = lm_eval_mode(loaded, windows[0], length, dtype_name)
        modes += [peer] if peer else []
        per_call = run_rounds(modes, loaded.device, seconds)
        flops = forward_flops_per_token(loaded.model.config, length)
        base = modes[0].tokens_scored / per_call[modes[0].label]
        for mode in modes:
            computed_tps = mode.tokens_computed / per_call[mode.label]
            scored_tps = mode.tokens_scored / per_call[mode.label]
            achieved = computed_tps * flops / 1e12
            rows.append(
                {
                    "attention": mode.label,
                    "context_length": length,
                    "batch": mode.batch,
                    "tokens_computed": mode.tokens_computed,
                    "tokens_scored": mode.tokens_scored,
                    "tokens_per_s": round(computed_tps, 1),
                    "scored_tokens_per_s": round(scored_tps, 1),
                    f"vs_{first.label}": round(scored_tps / base, 3),
                    "model_tflops": round(achieved, 3),
                    "mfu": round(achieved / peak, 4),
                    "peak_tflops": round(peak, 3),
                    "peak_source": peak_source,
                    "timing": TIMING,
                }
            )
        del peer, modes  # lm-eval's copy of the model
    adapter.activate(first)
    frame = write_table(rows, loaded, out, "bench.csv")
    frame.attrs["caption"] = (
        f"evalkit bench perplexity: median of {ROUNDS} rounds, every row (peers too) taking turns in "
        f"each round; vs_{first.label} compares scored tokens/s; MFU against {peak:.3g} TFLOP/s, "
        f"{peak_source}"
    )
    return frame
