"""Whether walking a shared KV cache beats batched passes, from costs measured on the model.

The shared walk computes fewer tokens (each distinct prefix once) but runs one request per
forward call, with a cache to cut back and extend; a batched pass computes every token but
spreads its call overhead over the batch. On a small model the per-call overhead dominates and
the walk loses (a 2-layer, 128-wide model: 2.3x slower); on a large one the saved tokens win.

The model: a call costs ``overhead + seconds_per_flop * flops``, with the FLOPs of the body on
the tokens it computes (linear layers per token plus attention over the keys each token sees),
and separate constants for the two paths (a batched call of many tokens runs at a better rate
than one request at a time, on a GPU). The four constants are timed on the actual model at the start
of a run (once per loaded model), with the adapter's own primitives. Each
group of requests that share a prefix is then walked only when the walk is predicted to take
under ``MARGIN`` of the batched time, so a wrong guess near the line costs little.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass

import numpy as np

from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from evalkit.models.prefix import walk_plan

MARGIN = 0.85  # walk only when predicted at most 85% of the batched time: the batched path is the safe default
REPEATS = 3  # each timing is the fastest of this many calls (the first, warm-up call is not counted)
TARGET_SECONDS = 0.05  # the batched calibration pass grows until one call takes this long


def layer_shape(config) -> tuple[int, int]:
    """(parameters of one decoder layer's linear maps: q, k, v, o and a gated MLP; attention width
    heads x head_dim): what a token costs per layer, and what each key it attends to adds."""
    width = config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or width // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inner = getattr(config, "intermediate_size", 4 * width)
    return width * head_dim * (2 * heads + 2 * kv_heads) + 3 * width * inner, heads * head_dim


def body_flops(config, new: float, context: float) -> float:
    """Matmul FLOPs of the decoder body for ``new`` tokens appended after ``context`` cached ones."""
    linear, attention_width = layer_shape(config)
    keys = context + (new + 1) / 2  # mean keys a new token attends to, causal
    return 2.0 * config.num_hidden_layers * new * (linear + 2 * attention_width * keys)


@dataclass(frozen=True)
class PathCosts:
    """Seconds per forward call and per FLOP, for batched passes and for steps on a shared cache."""

    batched_call: float
    batched_per_flop: float
    step_call: float
    step_per_flop: float
    measured_seconds: float = 0.0

    def describe(self) -> dict:
        return {k: float(f"{v:.4g}") for k, v in asdict(self).items()}


def _fit(small: tuple[float, float], large: tuple[float, float]) -> tuple[float, float]:
    """(per call, per FLOP) through two (flops, seconds) points; both kept non-negative."""
    (f1, t1), (f2, t2) = small, large
    per_flop = max((t2 - t1) / (f2 - f1), 0.0) if f2 > f1 else 0.0
    return max(t1 - per_flop * f1, 0.0), per_flop


def _synced(fn):
    """Seconds ``fn`` takes, device work included."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def _fastest(fn) -> float:
    fn()  # warm-up: kernels, allocator
    return min(_synced(fn) for _ in range(REPEATS))


_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def costs_for(adapter, tokens: np.ndarray, batch_tokens: int) -> PathCosts:
    """``measure``, once per loaded model and batch budget (a sweep or bench reuses it)."""
    per_model = _MEASURED.setdefault(adapter.model, {})
    if batch_tokens not in per_model:
        per_model[batch_tokens] = measure(adapter, tokens, batch_tokens)
    return per_model[batch_tokens]


def measure(adapter, tokens: np.ndarray, batch_tokens: int) -> PathCosts:
    """Time the two paths on ``adapter``'s model with its own primitives, on real prompt tokens.

    ``tokens``: a prompt of the run (only its ids are used, cut to the calibration lengths).
    Batched: one 8-token request, one 64-token request, and a batch of them grown until a call
    takes TARGET_SECONDS (on a GPU that is thousands of tokens, as the runner's batches are).
    Shared: a walk whose steps each recompute 2 tokens, i.e. the per-step overhead (cache cut
    and extension, one call); its per-FLOP cost is that of one 64-token sequence, the rate of
    one request at a time. About a second on CPU for a 135M model; milliseconds for tiny ones.
    """
    config = adapter.model.config
    started = time.perf_counter()
    answer = tokens[-1:]

    def request(prompt):
        return AnswerScoreRequest(np.ascontiguousarray(prompt), answer)

    small = request(tokens[:8])
    t_small = _fastest(lambda: adapter.score_answers([small]))
    width, count, t_single = int(min(64, len(tokens) - 1)), 1, None
    while True:
        batch = [request(tokens[:width])] * count
        t_large = _fastest(lambda: adapter.score_answers(batch))
        t_single = t_single or t_large
        if t_large >= TARGET_SECONDS or 4 * count * width > batch_tokens:
            break
        count *= 4
    f_small, f_width = body_flops(config, 9, 0), body_flops(config, width + 1, 0)
    batched = _fit((f_small, t_small), (count * f_width, t_large))
    _, step_per_flop = _fit((f_small, t_small), (f_width, t_single))

    context = int(min(16, len(tokens) - 1))
    prompts, rng = [tokens[:context]], np.random.default_rng(0)
    for _ in range(REPEATS + 1):  # each step changes the last prompt token: 2 tokens (it and the answer) to compute
        prompts.append(np.concatenate([prompts[-1][:-1], rng.integers(0, config.vocab_size, 1)]))
    steps = adapter.answer_shared([request(p) for p in prompts])
    next(steps)  # the prefill
    step_seconds = min([_synced(lambda: next(steps)) for _ in prompts[1:]][1:])  # the first step warms up
    step_call = max(step_seconds - step_per_flop * body_flops(config, 2, context - 1), 0.0)
    return PathCosts(*batched, step_call, step_per_flop, measured_seconds=time.perf_counter() - started)


def predicted_seconds(requests: list, costs: PathCosts, config, batch_tokens: int) -> tuple[float, float]:
    """(walked on one cache, batched) seconds for ``requests`` in walk order, as answer_shared runs them."""
    shared = batched = 0.0
    for request, n, keep in walk_plan(requests):
        per_batch = max(1, batch_tokens // n)  # the runner's batch size at this length
        shared += costs.step_call + costs.step_per_flop * body_flops(config, n - keep, keep)
        batched += costs.batched_call / per_batch + costs.batched_per_flop * body_flops(config, n, 0)
        if isinstance(request, GenerateRequest):  # decoding: one call per new token on either path
            decode = request.max_new_tokens
            shared += decode * (costs.step_call + costs.step_per_flop * body_flops(config, 1, n))
            batched += decode * (costs.batched_call / per_batch + costs.batched_per_flop * body_flops(config, 1, n))
    return shared, batched


def walk_pays(shared: float, batched: float) -> bool:
    return shared < MARGIN * batched


def predicted_branch_seconds(requests: list, costs: PathCosts, config, batch_tokens: int) -> float:
    """Seconds to answer ``requests`` branched off one trunk cache (``evalkit.models.branch``): the trunk
    in one call at the batched rate, then each pack of suffixes in one call whose tokens attend densely
    (masked keys cost as much as seen ones) over the trunk and the whole pack; greedy decoding adds one
    call per new token for the rows of a pack, at the one-request rate (a handful of tokens per call)."""
    from evalkit.models.branch import pack_tokens_for, packs, suffix_tokens, trunk_length

    trunk = trunk_length(requests)
    seconds = costs.batched_call + costs.batched_per_flop * body_flops(config, trunk, 0) if trunk else 0.0
    for pack in packs(requests, trunk, pack_tokens_for(requests, trunk, batch_tokens)):
        rows = [requests[i] for i in pack]
        size = sum(len(suffix_tokens(r, trunk)) for r in rows)
        seconds += costs.batched_call + costs.batched_per_flop * body_flops(config, size, trunk + size / 2)
        decode = max(getattr(r, "max_new_tokens", 0) for r in rows)
        for step in range(decode):  # rows that stop early are counted to the end: an upper bound
            keys = trunk + size + step * len(rows)
            seconds += costs.step_call + costs.step_per_flop * body_flops(config, len(rows), keys)
    return seconds


PATHS = ("batched", "walk", "branch")


def choose_path(predicted: dict) -> str:
    """The fastest of the predicted paths (seconds by name in PATHS); batched passes, the safe default,
    lose only to a path predicted under MARGIN of their time."""
    best = min((p for p in predicted if p != "batched"), key=predicted.get, default="batched")
    return best if best != "batched" and predicted[best] < MARGIN * predicted["batched"] else "batched"
