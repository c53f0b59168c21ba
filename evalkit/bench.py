"""``evalkit bench perplexity``: tokens/s and model-FLOP utilization of the token-loss path.

Speed is reported as ratios (against a plain transformers ``labels=`` loop on the same windows,
and against the device's peak FLOP/s), never asserted in tests.
"""

from __future__ import annotations

import time
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
    for fragment, table in PEAK_TFLOPS.items():
        if fragment in device_name:
            return table.get(dtype)
    return None


def _timed(fn, device, min_seconds: float) -> tuple[int, float]:
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: kernels, allocator, caches
    sync()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and calls >= 2:
            return calls, elapsed


def lm_eval_tokens_per_second(loaded, windows, length: int, dtype: str, seconds: float) -> float | None:
    """The peer users know: lm-eval's HF backend scoring the same windows (decoded to text)."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None
    if loaded.source.kind != "hf":
        return None
    lm = HFLM(pretrained=loaded.source.location, device=str(loaded.device), dtype=dtype, batch_size=1, max_length=length)
    texts = [loaded.tokenizer.decode(w) for w in windows]
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)]
    tokens = sum(len(lm.tok_encode(t)) for t in texts)
    calls, elapsed = _timed(lambda: lm.loglikelihood_rolling(requests, disable_tqdm=True), loaded.device, seconds)
    return calls * tokens / elapsed


def bench_perplexity(model: str, lengths: str, device: str, dtype: str, batch_tokens: int | None,
                     seconds: float, peak: float | None, out: str | None, attention=None):
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
    device_name = device_description(loaded.device)
    peak = peak or peak_tflops(device_name, dtype_name)
    rows = []
    for length in parse_lengths(lengths):
        batch = max(1, budget // length)
        windows = [stream.tokens[o : o + length] for o in random_offsets(stream, length, batch, seed=0)]
        requests = [TokenLossRequest(w) for w in windows]
        flops = forward_flops_per_token(loaded.model.config, length)
        # Variants take turns over several rounds and the median counts: load on a shared
        # machine drifts over seconds, and a fixed order would hand that drift to one variant.
        rounds = {v.label: [] for v in variants}
        for _ in range(ROUNDS):
            for variant in variants:
                variant.activate(loaded.model)
                calls, elapsed = _timed(lambda: adapter.token_losses(requests), loaded.device, seconds / ROUNDS)
                rounds[variant.label].append(calls * batch * length / elapsed)
        first_tps = None
        for variant in variants:
            tps = float(np.median(rounds[variant.label]))
            first_tps = first_tps or tps
            achieved = tps * flops / 1e12
            rows.append({"attention": variant.label, "context_length": length, "batch": batch, "tokens_per_s": round(tps, 1),
                         f"vs_{variants[0].label}": round(tps / first_tps, 3),
                         "model_tflops": round(achieved, 3), "mfu": round(achieved / peak, 4) if peak else None})
        variants[0].activate(loaded.model)
        ids = torch.from_numpy(np.stack(windows[:1])).to(loaded.device)

        def plain():
            with torch.inference_mode():
                loaded.model(input_ids=ids, labels=ids).loss.item()

        plain_calls, plain_elapsed = _timed(plain, loaded.device, seconds)
        plain_tps = plain_calls * length / plain_elapsed
        rows.append({"attention": f"plain transformers ({variants[0].label}, labels=, batch 1)", "context_length": length,
                     "batch": 1, "tokens_per_s": round(plain_tps, 1), f"vs_{variants[0].label}": round(plain_tps / first_tps, 3)})
        peer = lm_eval_tokens_per_second(loaded, windows, length, dtype_name, seconds)
        if peer is not None:
            rows.append({"attention": "lm-eval 0.4 HFLM loglikelihood_rolling (batch 1)", "context_length": length, "batch": 1,
                         "tokens_per_s": round(peer, 1), f"vs_{variants[0].label}": round(peer / first_tps, 3)})
    return _table(rows, loaded, out, "bench.csv")


def bench_needle(model: str, lengths: str, depths: str, trials: int, device: str, dtype: str,
                 batch_tokens: int | None, out: str | None, needle_options: dict | None = None):
    """Needle samples/s: evalkit's runner with the shared prefix cache wherever prompts share enough
    ("always"), without it (batched passes), and choosing per group from the measured cost ("auto",
    the default), vs a plain greedy ``generate`` loop, per length and over the whole grid (a
    trial's prompts share a prefix across lengths too). The auto mode's cost measurement runs once
    per model, in the warm-up; its seconds are a column of their own.

    All three score the same samples with the same model; the table also reports how often the
    verdicts agree (they must: greedy_correct is defined as what greedy decoding produces) and the
    fraction of prompt tokens the shared cache still has to compute.
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
    calibration = None
    if adapter.can_share_prefixes():  # the auto mode's cost measurement, once per model (as a run's first shared group does)
        longest = max((s.request for s in everything), key=lambda r: r.length)
        calibration = prefix_cost.costs_for(adapter, shared_sequence(longest), budget)
    rows, generate_total = [], 0.0
    for length in [*task.lengths, "all"]:
        group = everything if length == "all" else [s for s in everything if s.keys["context_length"] == length]
        # the runner modes take turns and the median counts, as in bench perplexity
        timings: dict = {share: [] for share in modes}
        verdicts: dict = {}
        for _ in range(ROUNDS):
            for share in modes:
                verdicts[share], seconds, decision = runner_verdicts(group, share=share)
                timings[share].append(seconds)
        shared, batched = verdicts["always"], verdicts[False]
        shared_s, batched_s, auto_s = (float(np.median(timings[share])) for share in modes)
        if length == "all":  # the loop gains nothing from a grid: its time is the sum over lengths
            plain, generate_s = None, generate_total
        else:
            plain, generate_s = generate_verdicts(group)
            generate_total += generate_s
        computed, total = tokens_to_compute([shared_sequence(s.request) for s in group])
        agree = sum(a == b == d and (plain is None or a == c) for a, b, c, d in zip(shared, batched, plain or shared, verdicts["auto"]))
        rows.append({"context_length": length, "samples": len(group), "tokens_computed_shared": round(computed / total, 3),
                     "shared_samples_per_s": round(len(group) / shared_s, 3),
                     "batched_samples_per_s": round(len(group) / batched_s, 3),
                     "auto_samples_per_s": round(len(group) / auto_s, 3),
                     "auto_walked": f"{decision.get('samples_walked', 0)}/{decision.get('samples_in_groups', 0)}",
                     "auto_vs_faster": round(min(shared_s, batched_s) / auto_s, 2),
                     "generate_samples_per_s": round(len(group) / generate_s, 3),
                     "shared_vs_batched": round(batched_s / shared_s, 2), "shared_vs_generate": round(generate_s / shared_s, 2),
                     "batched_vs_generate": round(generate_s / batched_s, 2),
                     "verdicts_agree": f"{agree}/{len(group)}", "accuracy": round(sum(shared) / len(shared), 3),
                     "auto_calibration_s": round(calibration.measured_seconds, 3) if calibration else None})
    return _table(rows, loaded, out, "bench_needle.csv")


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
                loaded.model.get_decoder()(input_ids=ids, use_cache=False)

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
