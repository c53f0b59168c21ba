"""What every bench shares: peak FLOP/s, the FLOPs of a forward, timed rounds that take turns, peers kept quiet.

Speed is reported as ratios (against a peer on the same work, and against the device's peak FLOP/s),
never asserted in tests. Every contender takes its turn in each round and the median counts, so
drifting load on a shared machine hits all of them alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Dense peak TFLOP/s by device name fragment and dtype (vendor data sheets, SXM parts).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3},
}


ROUNDS = 3
TIMING = f"median of {ROUNDS} rounds, all rows taking turns in each"


def forward_flops_per_token(config, context_length: int) -> float:
    """Matmul FLOPs of one causal forward, per token, averaged over a window of ``context_length``."""
    width = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    kv_heads = getattr(config, "num_key_value_heads", heads)
    inner = config.intermediate_size
    layers = config.num_hidden_layers
    projections = width * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    mlp = 3 * width * inner  # gate, up, down (SwiGLU)
    attention = 2 * heads * head_dim * (context_length + 1) / 2  # scores + weighted values, causal mean keys
    head = width * config.vocab_size
    return 2.0 * (layers * (projections + mlp + attention) + head)


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The data-sheet peak, shown beside the measured one for known GPUs (MFU uses the measured one)."""
    for fragment, table in PEAK_TFLOPS.items():
        if fragment in device_name:
            return table.get(dtype)
    return None


def measure_peak_tflops(device, dtype, size: int | None = None, repeats: int = 3) -> float:
    """Dense matmul TFLOP/s this device reaches at this dtype: (size x size) products, 2 size^3
    FLOPs each, best of ``repeats`` timings. A measured peak is the one a CPU has at all, and on a
    GPU it is the ceiling a model's matmuls can actually reach (clocks, power caps, MIG slices)."""
    import torch

    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    products = 10 if device.type == "cuda" else 1  # enough work per timing to hide kernel launches
    a = torch.randn(size, size, device=device).to(dtype)  # (n, n)
    b = torch.randn(size, size, device=device).to(dtype)  # (n, n)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        a @ b  # warm-up: library dispatch, thread pool, clocks
        sync()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(products):
                a @ b
            sync()
            best = min(best, time.perf_counter() - started)
    return products * 2.0 * size**3 / best / 1e12


def timed(fn, device, min_seconds: float, warm: bool = True, min_calls: int = 2) -> tuple[int, float]:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if warm:
        fn()  # warm-up: kernels, allocator, caches
        sync()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and calls >= min_calls:
            return calls, elapsed


@contextmanager
def quiet_peer():
    """Silence a peer while it is built and timed. lm-eval 0.4.13's ``loglikelihood_rolling`` passes
    ``disable_tqdm=False`` to its inner loop whatever the caller asks, and tqdm reads ``TQDM_DISABLE``
    only once, at import, as a default that this explicit argument overrides: so the bars go to a
    discarded stderr, and lm-eval's and transformers' loggers drop to errors for the duration."""
    import logging

    loggers = [logging.getLogger(name) for name in ("lm_eval", "transformers", "accelerate")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, redirect_stderr(sink):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@dataclass
class Mode:
    """One contender of a bench round: what to run, once set up, and the tokens one call computes
    (runs through the model) and scores (gets a loss), so saved work shows apart from kernel speed."""

    label: str
    call: Callable[[], object]
    batch: int
    tokens_computed: int
    tokens_scored: int
    setup: Callable[[], None] = lambda: None
    quiet: bool = False


def lm_eval_mode(loaded, window, length: int, dtype: str) -> Mode | None:
    """The peer users know: lm-eval's HF backend scoring the same window (decoded to text), batch 1."""
    try:
        from lm_eval import utils as lm_utils
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None
    if loaded.source.kind != "hf":
        return None
    with quiet_peer():
        lm = HFLM(
            pretrained=loaded.source.location, device=str(loaded.device), dtype=dtype, batch_size=1, max_length=length
        )
    text = loaded.tokenizer.decode(window)
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    # lm-eval's own windows: an EOT prefix, then disjoint windows of max_length; the model runs on
    # context + continuation minus the last token, the continuation is scored
    pieces = [
        lm_utils.make_disjoint_window(w)
        for w in lm_utils.get_rolling_token_windows(
            token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id, max_seq_len=lm.max_length, context_len=1
        )
    ]
    computed = sum(min(len(context) + len(continuation) - 1, lm.max_length) for context, continuation in pieces)
    scored = sum(len(continuation) for _, continuation in pieces)
    return Mode(
        f"lm-eval {version_of('lm_eval')} HFLM loglikelihood_rolling (batch 1)",
        lambda: lm.loglikelihood_rolling(requests, disable_tqdm=True),
        1,
        computed,
        scored,
        quiet=True,
    )


def version_of(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def run_rounds(modes: list[Mode], device, seconds: float, rounds: int | None = None) -> dict[str, float]:
    """Seconds per call of each mode: every mode takes its turn in each round and the median over
    rounds counts. Load on a shared machine drifts over seconds; timing a peer after all of
    evalkit's rounds (as this bench once did) hands that drift to the peer alone."""
    rounds = rounds or ROUNDS
    for mode in modes:  # warm-up once, outside the rounds
        with quiet_peer() if mode.quiet else nullcontext():
            mode.setup()
            mode.call()
    per_call = {mode.label: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            with quiet_peer() if mode.quiet else nullcontext():
                mode.setup()
                calls, elapsed = timed(mode.call, device, seconds / rounds, warm=False, min_calls=1)
            per_call[mode.label].append(elapsed / calls)
    return {label: float(np.median(times)) for label, times in per_call.items()}


def write_table(rows: list[dict], loaded, out: str | None, filename: str):
    """The bench's rows as a DataFrame naming the device and dtype, also written to OUT/filename."""
    import pandas as pd

    from evalkit.store.manifest import device_description

    frame = pd.DataFrame(rows)
    frame["device"] = f"{device_description(loaded.device)}, {str(loaded.dtype).removeprefix('torch.')}"
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(out) / filename, index=False)
    return frame
