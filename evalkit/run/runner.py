"""The runner: turns a task's samples into batched model calls, with progress and resume.

Samples are bucketed by request length; a batch holds as many sequences of one length as fit
the token budget. On an out-of-memory error the batch is halved and retried. Answer and generate
requests whose prompts share long prefixes (needle depths of one trial) are instead walked one by
one on a shared KV cache (``evalkit.models.prefix``), or, when they share one trunk (many queries on
one haystack), branched off its cache in packed batches (``evalkit.models.branch``). Each finished sample's rows go
straight to the run
store, so an interrupt loses at most one batch.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from evalkit.core.errors import EvalkitError
from evalkit.core.task import Sample, Task, runs_under
from evalkit.run.progress import length_label
from evalkit.store.results import RunStore

# Requests handed at once to a backend that batches by itself. 64 keeps a long-context engine busy
# (prefill dominates there) while progress moves and an interrupt costs one chunk: at 256, a RULER run
# at 1k-4k on a 2-core CPU went 40 minutes without a progress line.
LISTED_CHUNK = 64


def is_out_of_memory(exc: BaseException) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a backend that runs without torch cannot raise torch's errors
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def span_cost(start: int, end: int, scale: float) -> float:
    """Cost in token-equivalents of running tokens start..end-1 after ``start`` cached ones:
    each token costs 1 plus its attention over i keys, 2 i / C; summed, (end - start) + (end^2 - start^2) / C."""
    return (end - start) + (end * end - start * start) / scale


def shared_costs(run: list[Sample], scale: float) -> list[float]:
    """Cost of each sample of a run walked on one KV cache: only what it does not share with the sample before."""
    from evalkit.models.prefix import walk_plan

    return [span_cost(keep, n, scale) for _, n, keep in walk_plan([s.request for s in run])]


class Runner:
    """Runs a task's samples on a backend, through the protocol only (``evalkit.core.backend``)."""

    def __init__(self, backend, store: RunStore, batch_tokens: int, progress=None, share_prefixes: bool | str = True):
        self.backend = backend
        self.capabilities = backend.capabilities()
        self.store = store
        self.batch_tokens = batch_tokens
        self.progress = progress  # a ProgressReporter, or None
        # True / "auto": walk a shared cache where the measured cost says it beats batched passes;
        # "always": wherever prompts share enough (bench needle); "branch": every such group branched
        # off its trunk (bench queries); False: never
        self.share_prefixes = "auto" if share_prefixes is True else share_prefixes
        self.prefix_costs = None  # PathCosts, measured once per run when first needed
        self.prefix_decision: dict = {"mode": self.share_prefixes or "off"}  # what was chosen and why, for the manifest
        self.branched: set[int] = set()  # ids of the groups answered by branching off their trunk

    def run(self, task: Task, samples: list[Sample], variants: list) -> None:
        """Answer every pending sample under each variant (``evalkit.attention.RunVariant``), in order."""
        pending = {
            v.label: [s for s in samples if runs_under(s, k) and not self.store.is_done(v.label, s.id)]
            for k, v in enumerate(variants)
        }
        plans = {}
        for variant in variants:  # planned under the variant itself: its n convention decides whether prefixes share
            if pending[variant.label]:
                self.backend.activate(variant)
                plans[variant.label] = self._shared_runs(pending[variant.label])
        total = sum(len(p) for p in pending.values())
        scale = self.backend.attention_scale()
        total_cost = sum(
            sum(sum(self._group_costs(run, scale)) for run in runs)
            + sum(span_cost(0, s.request.length, scale) for s in alone)
            for runs, alone in plans.values()
        )
        if self.progress:
            planned = sum(runs_under(s, k) for k in range(len(variants)) for s in samples)
            self.progress.start(total, total_cost, skipped=planned - total)
        for variant in variants:
            if not pending[variant.label]:
                continue
            self.backend.activate(variant)
            runs, alone = plans[variant.label]
            for run in runs:
                if id(run) in self.branched:
                    self._run_branched(task, variant, run, scale)
                else:
                    self._run_shared(task, variant, run, scale)
            if self.capabilities.batches_itself:
                for chunk in self._chunks(alone):
                    self._run_listed(task, variant, chunk, scale)
                continue
            for bucket in self._buckets(alone):
                self._run_bucket(task, variant, bucket[0].request.length, bucket, scale)

    def _shared_runs(self, samples: list[Sample]) -> tuple[list[list[Sample]], list[Sample]]:
        """(runs answered on one cache each, the rest); answer scoring and generation share prefixes."""
        from evalkit.models.prefix import shared_runs, shared_sequence

        by_kind: dict[type, list[Sample]] = defaultdict(list)
        for sample in samples:
            if shared_sequence(sample.request) is not None:
                by_kind[type(sample.request)].append(sample)
        if not self.share_prefixes or not by_kind or not self.capabilities.shares_prefixes:
            return [], samples
        runs = []
        for kind_samples in by_kind.values():
            kind_runs, _ = shared_runs([shared_sequence(s.request) for s in kind_samples])
            runs += [[kind_samples[i] for i in run] for run in kind_runs]
        if self.share_prefixes == "auto" and runs:
            runs = self._runs_that_pay(runs)
        elif self.share_prefixes == "branch" and self.capabilities.branches:
            self.branched |= {id(run) for run in runs}
        in_runs = {id(s) for run in runs for s in run}
        return runs, [s for s in samples if id(s) not in in_runs]

    def _runs_that_pay(self, runs: list[list[Sample]]) -> list[list[Sample]]:
        """The runs whose walk on one cache is predicted faster than batched passes (``evalkit.models.prefix_cost``)."""
        from evalkit.models import prefix_cost
        from evalkit.models.prefix import shared_sequence

        if self.prefix_costs is None:
            longest = max((s.request for run in runs for s in run), key=lambda r: r.length)
            self.prefix_costs = self.backend.prefix_costs(shared_sequence(longest), self.batch_tokens)
        config = self.backend.config
        can_branch = self.capabilities.branches
        kept, totals, chosen = [], {"auto": 0.0, "batched_only": 0.0}, {p: [] for p in prefix_cost.PATHS}
        for run in runs:
            requests = [s.request for s in run]
            shared, batched = prefix_cost.predicted_seconds(requests, self.prefix_costs, config, self.batch_tokens)
            predicted = {"batched": batched, "walk": shared}
            if can_branch:
                predicted["branch"] = prefix_cost.predicted_branch_seconds(
                    requests, self.prefix_costs, config, self.batch_tokens
                )
            path = prefix_cost.choose_path(predicted)
            chosen[path].append(run)
            if path != "batched":
                kept.append(run)
            if path == "branch":
                self.branched.add(id(run))
            totals["auto"] += predicted[path]
            totals["batched_only"] += batched
        self.prefix_decision = {
            "mode": "auto",
            "costs": self.prefix_costs.describe(),
            "groups": len(runs),
            "groups_walked": len(chosen["walk"]),
            "samples_walked": sum(len(r) for r in chosen["walk"]),
            "samples_in_groups": sum(len(r) for r in runs),
            "groups_branched": len(chosen["branch"]),
            "samples_branched": sum(len(r) for r in chosen["branch"]),
            "predicted_seconds": {k: round(v, 3) for k, v in totals.items()},
            "why": (
                f"each group takes the fastest predicted path of batched passes, a walk on one cache "
                f"and branching off its trunk in packed "
                f"batches{'' if can_branch else ' (not exact for this model: off)'}; "
                f"batched unless another is predicted under {prefix_cost.MARGIN:.0%} of its time"
            ),
        }
        return kept

    def _group_costs(self, run: list[Sample], scale: float) -> list[float]:
        """Progress cost of each sample of a group, by the path it takes."""
        if id(run) not in self.branched:
            return shared_costs(run, scale)
        from evalkit.models.branch import trunk_length

        trunk = trunk_length([s.request for s in run])
        return [
            span_cost(trunk, s.request.length, scale) + (span_cost(0, trunk, scale) if i == 0 else 0.0)
            for i, s in enumerate(run)
        ]

    def _run_branched(self, task: Task, variant, run: list[Sample], scale: float) -> None:
        started = time.perf_counter()
        try:
            answers = self.backend.answer_branched([s.request for s in run], self.batch_tokens)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            raise self._does_not_fit(max(s.request.length for s in run)) from None
        note = f"{variant.label} {len(run)} queries (branched off one trunk)"
        self._record(task, variant, run, answers, started, note, sum(self._group_costs(run, scale)))

    def _run_shared(self, task: Task, variant, run: list[Sample], scale: float) -> None:
        started = time.perf_counter()
        answers = self.backend.answer_shared([s.request for s in run])
        for sample, cost in zip(run, shared_costs(run, scale)):
            try:
                answer = next(answers)
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                raise self._does_not_fit(sample.request.length) from None
            note = f"{variant.label} {length_label([sample])} (shared prefix)"
            self._record(task, variant, [sample], [answer], started, note, cost)
            started = time.perf_counter()

    @staticmethod
    def _buckets(samples: list[Sample]) -> list[list[Sample]]:
        by_shape: dict[tuple, list[Sample]] = defaultdict(list)
        for sample in samples:
            by_shape[(type(sample.request).__name__, *sample.request.shape)].append(sample)
        # Longest first: an out-of-memory problem shows at once, not at the end of a long run.
        return sorted(by_shape.values(), key=lambda bucket: -bucket[0].request.length)

    def _run_bucket(self, task: Task, variant, length: int, bucket: list[Sample], scale: float = math.inf) -> None:
        batch_size = max(1, self.batch_tokens // length)
        index = 0
        while index < len(bucket):
            batch = bucket[index : index + batch_size]
            started = time.perf_counter()
            try:
                answers = self.backend.answer([s.request for s in batch])
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self._free_memory()
                if batch_size == 1:
                    raise self._does_not_fit(length) from None
                batch_size //= 2
                continue
            cost = len(batch) * span_cost(0, length, scale)
            self._record(task, variant, batch, answers, started, f"{variant.label} {length_label(batch)}", cost)
            index += len(batch)

    def _chunks(self, samples: list[Sample]) -> list[list[Sample]]:
        """Whole lists for a backend that batches by itself (continuous batching), in chunks of
        ``LISTED_CHUNK`` requests of one kind, so progress moves and an interrupt loses one chunk at most."""
        by_kind: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            by_kind[type(sample.request).__name__].append(sample)
        ordered = [sorted(kind, key=lambda s: -s.request.length) for kind in by_kind.values()]
        return [kind[i : i + LISTED_CHUNK] for kind in ordered for i in range(0, len(kind), LISTED_CHUNK)]

    def _run_listed(self, task: Task, variant, chunk: list[Sample], scale: float) -> None:
        started = time.perf_counter()
        answers = self.backend.answer([s.request for s in chunk])
        cost = sum(span_cost(0, s.request.length, scale) for s in chunk)
        self._record(task, variant, chunk, answers, started, f"{variant.label} {length_label(chunk)}", cost)

    def _record(self, task: Task, variant, samples: list[Sample], answers, started: float, note: str, cost: float):
        """Store the rows of answered samples, then move the progress bar by them."""
        for sample, answer in zip(samples, answers):
            self.store.append(variant.label, sample.id, task.rows(sample, answer))
        if self.progress:
            tokens = sum(s.request.length for s in samples)
            self.progress.advance(len(samples), tokens, time.perf_counter() - started, note, cost)

    def _does_not_fit(self, length: int) -> EvalkitError:
        return EvalkitError(
            f"one sequence of {length} tokens does not fit in {self.backend.device} memory",
            "use shorter --lengths, --dtype bfloat16, or a larger device",
        )

    def _free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
