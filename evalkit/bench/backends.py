"""``evalkit bench backends``: the same generation grid on each backend, wall time, tokens/s and scores.

RULER (every task that runs offline) and needle with ``--scoring generate``, built once from the
task plugins, answered by each backend as the runner hands them over: a backend that batches by
itself (vLLM) gets every prompt of a workload at once; the others get equal-shape buckets within
their batch budget (on CPU one prompt at a time past 2k tokens). Scores come from the tasks' own
rows, so the table says whether every per-sample score is identical across backends, not just the
averages. Backends run one after another in this process; load time is its own column.
"""

from __future__ import annotations

import time
from collections import defaultdict

# What each workload's per-sample verdict is: RULER's string match, needle's exact match of the parsed answer.
VERDICT = {"ruler": "string_match", "needle": "exact_match"}


def bench_backends(
    model: str,
    lengths: str = "2k,4k",
    samples: int = 10,
    tasks: str = "all",
    needle_lengths: str | None = None,
    needle_depths: str = "0:100:50",
    needle_trials: int = 2,
    backends: tuple[str, ...] = ("transformers", "vllm"),
    device: str = "auto",
    dtype: str = "float32",
    engine: dict | None = None,
    out: str | None = None,
    log=print,
):
    """One row per (workload, length, backend): requests, tokens fed and generated, wall seconds,
    tokens/s, the mean verdict, and the samples whose verdict, and whose generated token ids,
    differ from the first backend's.
    ``engine``: the vLLM backend's options (``VllmOptions`` fields), e.g. ``load_format="dummy"``."""
    from pathlib import Path

    import pandas as pd

    rows, verdicts, outputs = [], {}, {}
    for name in backends:
        backend, load_s = _load(name, model, device, dtype, engine, log)
        try:
            for workload, task in _workloads(
                backend, lengths, samples, tasks, needle_lengths, needle_depths, needle_trials
            ):
                by_length = defaultdict(list)
                for sample in task.samples():
                    by_length[sample.keys["context_length"]].append(sample)
                for length, built in sorted(by_length.items()):
                    log(f"{name}: {workload} at {length}, {len(built)} samples")
                    started = time.perf_counter()
                    answers = _answer(backend, [s.request for s in built])
                    wall = time.perf_counter() - started
                    found = _verdicts(task, built, answers, VERDICT[workload])
                    verdicts.setdefault((name, workload), {}).update(found)
                    outputs.setdefault((name, workload), {}).update(
                        {(length, s.id): tuple(a.tolist()) for s, a in zip(built, answers) if hasattr(a, "tolist")}
                    )
                    rows.append(_row(name, workload, length, built, answers, wall, load_s, found))
        finally:
            if hasattr(backend, "shutdown"):
                backend.shutdown()
    frame = pd.DataFrame(rows)
    first = backends[0]
    for column, table in (("verdicts", verdicts), ("generations", outputs)):
        differing = []
        for row in rows:
            mine, theirs = table[row["backend"], row["workload"]], table[first, row["workload"]]
            differing.append(sum(v != theirs.get(k) for k, v in mine.items() if k[0] == row["context_length"]))
        frame[f"{column} differing from {first}"] = differing
    for _cell, group in frame.groupby(["workload", "context_length"], sort=False):
        base = group[group.backend == first].wall_s.iloc[0]
        frame.loc[group.index, f"speedup vs {first}"] = (base / group.wall_s).round(2)
    frame.attrs["caption"] = f"{model}, {dtype}; engine options {engine or {}}"
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        frame.to_csv(Path(out) / "bench_backends.csv", index=False)
    return frame


def _load(name: str, model: str, device: str, dtype: str, engine: dict | None, log):
    from evalkit.core.backend import get_backend
    from evalkit.models.loading import LoadOptions

    cls = get_backend(name)
    options = cls.Options(**(engine or {})) if getattr(cls, "Options", None) and name == "vllm" else None
    started = time.perf_counter()
    backend = cls.load(model, LoadOptions(device=device, dtype=dtype), options, log=log)
    return backend, time.perf_counter() - started


def _workloads(backend, lengths, samples, tasks, needle_lengths, needle_depths, needle_trials):
    from evalkit.core.task import TaskContext
    from tasks.needle import NeedleOptions, NeedleTask
    from tasks.ruler import RulerOptions, RulerTask

    context = TaskContext(backend.tokenizer, backend.max_positions, False, 1234, backend.training_length)
    names = tasks
    if tasks == "all":  # qa_1 / qa_2 need local SQuAD / HotpotQA files: the offline set is the other 11
        from evalkit.data.ruler import TASKS

        names = ",".join(t for t in TASKS if not t.startswith("qa"))
    yield "ruler", RulerTask(RulerOptions(tasks=names, lengths=lengths, samples=samples), context)
    if needle_trials:
        needle = NeedleOptions(
            lengths=needle_lengths or lengths, depths=needle_depths, trials=needle_trials, scoring="generate"
        )
        yield "needle", NeedleTask(needle, context)


def _answer(backend, requests: list) -> list:
    """As the runner hands requests over: whole lists of one kind to a backend that batches by itself,
    else equal-shape buckets of one kind of at most its batch budget in tokens."""
    listed = backend.capabilities().batches_itself
    budget = backend.batch_tokens()
    buckets = defaultdict(list)
    for index, request in enumerate(requests):
        buckets[type(request).__name__ if listed else (type(request).__name__, request.shape)].append(index)
    answers = [None] * len(requests)
    for indices in buckets.values():
        per_batch = len(indices) if listed else max(1, budget // max(1, requests[indices[0]].positions))
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            for index, answer in zip(chunk, backend.answer([requests[i] for i in chunk])):
                answers[index] = answer
    return answers


def _verdicts(task, samples, answers, metric: str) -> dict:
    """{(context_length, sample id): verdict} from the task's own rows."""
    out = {}
    for sample, answer in zip(samples, answers):
        for row in task.rows(sample, answer):
            if row.get("metric") == metric:
                out[sample.keys.get("context_length"), sample.id] = float(row["value"])
    return out


def _row(name, workload, length, samples, answers, wall, load_s, verdicts) -> dict:
    import numpy as np

    prompt = sum(s.request.length for s in samples)  # prompt (+ answer) tokens fed
    generated = sum(len(a) for a in answers if isinstance(a, np.ndarray))
    scores = list(verdicts.values())
    return {
        "workload": workload,
        "context_length": length,
        "backend": name,
        "requests": len(samples),
        "tokens_fed": prompt,
        "generated_tokens": generated,
        "wall_s": round(wall, 2),
        "tokens_per_s": round((prompt + generated) / wall, 1),
        "score": round(sum(scores) / len(scores), 4) if scores else float("nan"),
        "load_s": round(load_s, 1),
    }
