"""``evalkit bench perplexity``: tokens/s and model-FLOP utilization of the token-loss path.

Speed is reported as ratios (against a plain transformers ``labels=`` loop on the same windows,
and against the device's peak FLOP/s), never asserted in tests.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


def _timed(fn, device, min_seconds: float, warm: bool = True, min_calls: int = 2) -> tuple[int, float]:
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
        lm = HFLM(pretrained=loaded.source.location, device=str(loaded.device), dtype=dtype, batch_size=1, max_length=length)
    text = loaded.tokenizer.decode(window)
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)]
    # lm-eval's own windows: an EOT prefix, then disjoint windows of max_length; the model runs on
    # context + continuation minus the last token, the continuation is scored
    pieces = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
        token_list=lm.tok_encode(text), prefix_token=lm.prefix_token_id, max_seq_len=lm.max_length, context_len=1)]
    computed = sum(min(len(context) + len(continuation) - 1, lm.max_length) for context, continuation in pieces)
    scored = sum(len(continuation) for _, continuation in pieces)
    return Mode(f"lm-eval {_version('lm_eval')} HFLM loglikelihood_rolling (batch 1)",
                lambda: lm.loglikelihood_rolling(requests, disable_tqdm=True), 1, computed, scored, quiet=True)


def _version(package: str) -> str:
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
                calls, elapsed = _timed(mode.call, device, seconds / rounds, warm=False, min_calls=1)
            per_call[mode.label].append(elapsed / calls)
    return {label: float(np.median(times)) for label, times in per_call.items()}


def bench_perplexity(model: str, lengths: str, device: str, dtype: str, batch_tokens: int | None,
                     seconds: float, peak: float | None, out: str | None, attention=None, probe_size: int | None = None):
    """Tokens/s of evalkit's batched token losses per attention variant, of a plain transformers
    ``labels=`` loop and of lm-eval (when installed), all taking turns in each round; MFU against
    ``peak`` TFLOP/s, or else against a matmul probe measured on the device."""
    import torch

    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.data.windows import random_offsets
    from evalkit.grid import parse_lengths
    from evalkit.manifest import device_description
    from evalkit.models.adapter import ModelAdapter
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.models.requests import TokenLossRequest
    from evalkit.runner import default_batch_tokens
    from evalkit.variants import VariantRequest, resolve_variants

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype), log=print)
    variants = resolve_variants(loaded, attention or [VariantRequest("softmax")])
    adapter = ModelAdapter(loaded)
    stream = token_stream(load_corpus(), loaded.tokenizer)
    budget = batch_tokens or default_batch_tokens(loaded)
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

        modes = [Mode(v.label, lambda: adapter.token_losses(requests), batch, batch * length, batch * (length - 1),
                      setup=lambda v=v: v.activate(loaded.model)) for v in variants]
        modes.append(Mode(f"plain transformers ({first.label}, labels=, batch 1)", plain, 1, length, length - 1,
                          setup=lambda: first.activate(loaded.model)))
        peer = lm_eval_mode(loaded, windows[0], length, dtype_name)
        modes += [peer] if peer else []
        per_call = run_rounds(modes, loaded.device, seconds)
        flops = forward_flops_per_token(loaded.model.config, length)
        base = modes[0].tokens_scored / per_call[modes[0].label]
        for mode in modes:
            computed_tps = mode.tokens_computed / per_call[mode.label]
            scored_tps = mode.tokens_scored / per_call[mode.label]
            achieved = computed_tps * flops / 1e12
            rows.append({"attention": mode.label, "context_length": length, "batch": mode.batch,
                         "tokens_computed": mode.tokens_computed, "tokens_scored": mode.tokens_scored,
                         "tokens_per_s": round(computed_tps, 1), "scored_tokens_per_s": round(scored_tps, 1),
                         f"vs_{first.label}": round(scored_tps / base, 3),
                         "model_tflops": round(achieved, 3), "mfu": round(achieved / peak, 4),
                         "peak_tflops": round(peak, 3), "peak_source": peak_source, "timing": TIMING})
        del peer, modes  # lm-eval's copy of the model
    first.activate(loaded.model)
    frame = _table(rows, loaded, out, "bench.csv")
    frame.attrs["caption"] = (f"evalkit bench perplexity: median of {ROUNDS} rounds, every row (peers too) taking turns in "
                              f"each round; vs_{first.label} compares scored tokens/s; MFU against {peak:.3g} TFLOP/s, "
                              f"{peak_source}")
    return frame


def bench_needle(model: str, lengths: str, depths: str, trials: int, device: str, dtype: str,
                 batch_tokens: int | None, out: str | None, needle_options: dict | None = None):
    """Needle samples/s: evalkit's runner with the shared prefix cache wherever prompts share enough
    ("always"), without it (batched passes), and choosing per group from the measured cost ("auto",
    the default), vs a plain greedy ``generate`` loop, per length and over the whole grid (a
    trial's prompts share a prefix across lengths too). The auto mode's cost measurement runs once
    per model, in the warm-up; its seconds are a column of their own.

    All three score the same samples with the same model; the table also reports how often the
    verdicts agree (they must: greedy_correct is defined as what greedy decoding produces) and the
    prompt tokens the shared cache still has to compute against all prompt tokens (what batched
    passes and the loop compute). Every mode, the loop included, takes its turn in each round.
    """
    import torch

    from evalkit.models.adapter import ModelAdapter
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.models import prefix_cost
    from evalkit.models.prefix import shared_sequence, tokens_to_compute
    from evalkit.runner import Runner, Variant, default_batch_tokens
    from evalkit.task import TaskContext
    from tasks.needle import NeedleOptions, NeedleTask

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype), log=print)
    adapter = ModelAdapter(loaded)
    budget = batch_tokens or default_batch_tokens(loaded)
    task = NeedleTask(NeedleOptions(lengths=lengths, depths=depths, trials=trials, **(needle_options or {})),
                      TaskContext(loaded.tokenizer, loaded.max_positions, True, 1234))
    variant = Variant("softmax", lambda m: None)

    def runner_verdicts(samples, share) -> tuple[list[bool], float, dict]:
        store = _VerdictStore()
        started = time.perf_counter()
        runner = Runner(adapter, store, budget, None, share_prefixes=share)
        runner.run(task, samples, [variant])
        return [store.verdicts[s.id] for s in samples], time.perf_counter() - started, runner.prefix_decision

    def generate_verdicts(samples) -> tuple[list[bool], float]:
        verdicts, started = [], time.perf_counter()
        for r in (s.request for s in samples):
            ids = torch.from_numpy(r.prompt)[None].to(loaded.device)
            with torch.inference_mode():
                out_ids = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                max_new_tokens=len(r.answer), pad_token_id=min(adapter.eos_ids() or {0}))
            new = out_ids[0, ids.shape[1] :].cpu().numpy()
            verdicts.append(len(new) == len(r.answer) and bool((new == r.answer).all()))
        return verdicts, time.perf_counter() - started

    everything = task.samples()
    modes = ("always", False, "auto")  # the shared walk everywhere it can, never, and where it is predicted to pay
    for share in modes:  # warm-up: kernels, allocator, caches
        runner_verdicts(everything[:3], share=share)
    generate_verdicts(everything[:1])
    calibration = None
    if adapter.can_share_prefixes():  # the auto mode's cost measurement, once per model (as a run's first shared group does)
        longest = max((s.request for s in everything), key=lambda r: r.length)
        calibration = prefix_cost.costs_for(adapter, shared_sequence(longest), budget)
    rows, generate_total = [], 0.0
    for length in [*task.lengths, "all"]:
        group = everything if length == "all" else [s for s in everything if s.keys["context_length"] == length]
        # the runner modes and the generate loop take turns and the median counts, as in bench perplexity;
        # the loop gains nothing from a grid, so over "all" its time is the sum of its medians per length
        timings: dict = {share: [] for share in modes}
        verdicts: dict = {}
        contenders = modes if length == "all" else (*modes, "generate")
        timings["generate"] = []
        for _ in range(ROUNDS):
            for share in contenders:
                if share == "generate":
                    verdicts[share], seconds = generate_verdicts(group)
                else:
                    verdicts[share], seconds, decision = runner_verdicts(group, share=share)
                timings[share].append(seconds)
        shared, batched = verdicts["always"], verdicts[False]
        shared_s, batched_s, auto_s = (float(np.median(timings[share])) for share in modes)
        if length == "all":
            plain, generate_s = None, generate_total
        else:
            plain, generate_s = verdicts["generate"], float(np.median(timings["generate"]))
            generate_total += generate_s
        # prompt tokens the shared walk runs through the model vs all prompt tokens (what batched
        # passes and the generate loop compute): the work the algorithm saves, apart from kernel speed
        computed, total = tokens_to_compute([shared_sequence(s.request) for s in group])
        agree = sum(a == b == d and (plain is None or a == c) for a, b, c, d in zip(shared, batched, plain or shared, verdicts["auto"]))
        rows.append({"context_length": length, "samples": len(group), "prompt_tokens": total, "prompt_tokens_computed_shared": computed,
                     "tokens_computed_shared": round(computed / total, 3),
                     "shared_samples_per_s": round(len(group) / shared_s, 3),
                     "batched_samples_per_s": round(len(group) / batched_s, 3),
                     "auto_samples_per_s": round(len(group) / auto_s, 3),
                     "auto_walked": f"{decision.get('samples_walked', 0)}/{decision.get('samples_in_groups', 0)}",
                     "auto_vs_faster": round(min(shared_s, batched_s) / auto_s, 2),
                     "generate_samples_per_s": round(len(group) / generate_s, 3),
                     "shared_vs_batched": round(batched_s / shared_s, 2), "shared_vs_generate": round(generate_s / shared_s, 2),
                     "batched_vs_generate": round(generate_s / batched_s, 2),
                     "verdicts_agree": f"{agree}/{len(group)}", "accuracy": round(sum(shared) / len(shared), 3),
                     "auto_calibration_s": round(calibration.measured_seconds, 3) if calibration else None, "timing": TIMING})
    frame = _table(rows, loaded, out, "bench_needle.csv")
    frame.attrs["caption"] = (f"evalkit bench needle: median of {ROUNDS} rounds, the runner's modes and the generate loop "
                              "taking turns in each round (the loop's 'all' is the sum of its medians per length)")
    return frame


class _VerdictStore:
    """What the runner needs of a RunStore, keeping only each sample's greedy verdict."""

    def __init__(self):
        self.verdicts: dict[str, bool] = {}

    def is_done(self, variant: str, sample_id: str) -> bool:
        return False

    def append(self, variant: str, sample_id: str, rows: list[dict]) -> None:
        self.verdicts[sample_id] = next(r["value"] == 1.0 for r in rows if r["metric"] == "greedy_correct")


def _table(rows: list[dict], loaded, out: str | None, filename: str):
    """The bench's rows as a DataFrame naming the device and dtype, also written to OUT/filename."""
    import pandas as pd

    from evalkit.manifest import device_description

    frame = pd.DataFrame(rows)
    frame["device"] = f"{device_description(loaded.device)}, {str(loaded.dtype).removeprefix('torch.')}"
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(out) / filename, index=False)
    return frame


def bench_focus(model: str, lengths: str, device: str, dtype: str, seconds: float, out: str | None):
    """Overhead of the attention probe (every layer, last row) over a plain forward, per length."""
    import torch

    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.grid import parse_lengths
    from evalkit.models.body import decoder_body
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.models.probe import run_probes
    from evalkit.models.requests import ProbeRequest

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
                calls, elapsed = _timed(fn, loaded.device, seconds / ROUNDS)
                timings[name].append(elapsed / calls)
        plain_s, probe_s = float(np.median(timings["plain"])), float(np.median(timings["probe"]))
        rows.append({"context_length": length, "plain_forward_s": round(plain_s, 4), "probed_forward_s": round(probe_s, 4),
                     "overhead": f"{100 * (probe_s / plain_s - 1):+.1f}%"})
    return _table(rows, loaded, out, "bench_focus.csv")
