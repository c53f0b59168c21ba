"""``evalkit bench needle``: needle samples/s with and without the shared prefix cache, vs a greedy generate loop."""

from __future__ import annotations

import time

import numpy as np

from evalkit.bench.timing import ROUNDS, TIMING, write_table


def bench_needle(
    model: str,
    lengths: str,
    depths: str,
    trials: int,
    device: str,
    dtype: str,
    batch_tokens: int | None,
    out: str | None,
    needle_options: dict | None = None,
):
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

    from evalkit.attention import AttentionSpec, RunVariant
    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.task import TaskContext
    from evalkit.models import prefix_cost
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.models.prefix import shared_sequence, tokens_to_compute
    from evalkit.run.runner import Runner
    from tasks.needle import NeedleOptions, NeedleTask

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype), log=print)
    adapter = TransformersBackend(loaded)
    budget = batch_tokens or adapter.batch_tokens()
    task = NeedleTask(
        NeedleOptions(lengths=lengths, depths=depths, trials=trials, **(needle_options or {})),
        TaskContext(loaded.tokenizer, loaded.max_positions, True, 1234),
    )
    variant = RunVariant("softmax", AttentionSpec("softmax"))

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
                out_ids = loaded.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=len(r.answer),
                    pad_token_id=min(adapter.eos_ids() or {0}),
                )
            new = out_ids[0, ids.shape[1] :].cpu().numpy()
            verdicts.append(len(new) == len(r.answer) and bool((new == r.answer).all()))
        return verdicts, time.perf_counter() - started

    everything = task.samples()
    modes = ("always", False, "auto")  # the shared walk everywhere it can, never, and where it is predicted to pay
    for share in modes:  # warm-up: kernels, allocator, caches
        runner_verdicts(everything[:3], share=share)
    generate_verdicts(everything[:1])
    calibration = None
    if (
        adapter.can_share_prefixes()
    ):  # the auto mode's cost measurement, once per model (as a run's first shared group does)
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
        agree = sum(
            a == b == d and (plain is None or a == c)
            for a, b, c, d in zip(shared, batched, plain or shared, verdicts["auto"])
        )
        rows.append(
            {
                "context_length": length,
                "samples": len(group),
                "prompt_tokens": total,
                "prompt_tokens_computed_shared": computed,
                "tokens_computed_shared": round(computed / total, 3),
                "shared_samples_per_s": round(len(group) / shared_s, 3),
                "batched_samples_per_s": round(len(group) / batched_s, 3),
                "auto_samples_per_s": round(len(group) / auto_s, 3),
                "auto_walked": f"{decision.get('samples_walked', 0)}/{decision.get('samples_in_groups', 0)}",
                "auto_vs_faster": round(min(shared_s, batched_s) / auto_s, 2),
                "generate_samples_per_s": round(len(group) / generate_s, 3),
                "shared_vs_batched": round(batched_s / shared_s, 2),
                "shared_vs_generate": round(generate_s / shared_s, 2),
                "batched_vs_generate": round(generate_s / batched_s, 2),
                "verdicts_agree": f"{agree}/{len(group)}",
                "accuracy": round(sum(shared) / len(shared), 3),
                "auto_calibration_s": round(calibration.measured_seconds, 3) if calibration else None,
                "timing": TIMING,
            }
        )
    frame = write_table(rows, loaded, out, "bench_needle.csv")
    frame.attrs["caption"] = (
        f"evalkit bench needle: median of {ROUNDS} rounds, the runner's modes and the generate loop "
        "taking turns in each round (the loop's 'all' is the sum of its medians per length)"
    )
    return frame


class _VerdictStore:
    """What the runner needs of a RunStore, keeping only each sample's greedy verdict."""

    def __init__(self):
        self.verdicts: dict[str, bool] = {}

    def is_done(self, variant: str, sample_id: str) -> bool:
        return False

    def append(self, variant: str, sample_id: str, rows: list[dict]) -> None:
        self.verdicts[sample_id] = next(r["value"] == 1.0 for r in rows if r["metric"] == "greedy_correct")
