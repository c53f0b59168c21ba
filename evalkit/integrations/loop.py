"""Evaluating during training from a loop of your own (no Trainer): ``TrainingEvaluator``.

    evaluator = TrainingEvaluator(tasks=["needle"], every=500, out="runs/evalkit", lengths="256,512,1k")
    for step in range(1, steps + 1):
        ...                                       # forward, backward, optimizer.step()
        metrics = evaluator.maybe_evaluate(model, tokenizer, step)
        if metrics:
            writer.add_scalars(...)               # or wandb.log(metrics, step=step), or log=... below

Each evaluation is ``evalkit.evaluate`` on the model object (no checkpoint written, the model
handed back as found) into ``out/<series>/step-<N>/<task>/``, the layout ``evalkit track`` writes,
so ``evalkit plot out --x step`` and ``evalkit compare out --baseline step=500 --candidate step=1000``
read it. The cost is bounded and said: a small grid by default (``SMALL_GRID``), and the seconds
each evaluation took are logged as ``evalkit/<task>/seconds``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError

# The default grid per task: a few prompts per length, minutes at most on a small model.
SMALL_GRID: dict[str, dict[str, Any]] = {
    "needle": {"trials": 2, "depths": "0,50,100"},
    "perplexity": {"samples": 2},
    "focus": {"trials": 1, "depths": "0,50,100"},
}


class TrainingEvaluator:
    """Evaluates a model in training every ``every`` steps on ``tasks``; logs ``evalkit/<task>/<metric>@<length>``.

    ``options`` are task options and ``evalkit.evaluate`` keywords shared by the tasks (each task
    takes those it has: ``lengths`` goes to all, ``trials`` to needle); ``task_options`` gives one
    task its own (``{"perplexity": {"samples": 4}}``). ``log(metrics, step)`` receives each
    evaluation's numbers (e.g. ``wandb.log``'s shape). ``series`` names the folder level above
    ``step-<N>`` (default "model"). ``distributed=True`` shares each evaluation across the ranks of a
    torchrun job (every rank must call it at the same step); by default the caller evaluates alone.
    """

    def __init__(
        self,
        tasks: Sequence[str] = ("needle",),
        every: int | None = 500,
        out: str | Path = "results/training",
        *,
        attention: str | Sequence[str] = "auto",
        series: str = "model",
        small_grid: bool = True,
        task_options: dict[str, dict[str, Any]] | None = None,
        log: Callable[[dict, int], Any] | None = None,
        bounds: bool = False,
        distributed: bool = False,
        **options: Any,
    ):
        from evalkit.api import ATTENTION_FLAGS, RUN_SETTINGS, known_options
        from evalkit.core.registry import get_task

        self.tasks = tuple(tasks)
        if not self.tasks:
            raise ConfigError("no tasks to evaluate", 'give tasks=["needle"] (or perplexity, focus, ruler)')
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(
                f"bad every={every!r}", "give a positive number of steps (or None to evaluate only when asked)"
            )
        self.every, self.out, self.series, self.log, self.bounds = every, Path(out), series, log, bounds
        self.attention, self.distributed = attention, distributed
        shared = set(ATTENTION_FLAGS) | set(RUN_SETTINGS)
        for key in options:
            if key not in shared and not any(key in known_options(t) for t in self.tasks):
                known = sorted({k for t in self.tasks for k in known_options(t)})
                raise ConfigError(
                    f"no task in {', '.join(self.tasks)} takes the option {key!r}", f"known: {', '.join(known)}"
                )
        for key in ("out", "resume", "name", "progress", "distributed"):
            if key in options:
                raise ConfigError(
                    f"{key}= is set by the evaluator", "leave it out (out= of the evaluator names the folder)"
                )
        self.options: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            fields = {f.name for f in dataclasses.fields(get_task(task).Options)}
            mine = {
                **(SMALL_GRID.get(task, {}) if small_grid else {}),
                **{k: v for k, v in options.items() if k in fields or k in shared},
                **(task_options or {}).get(task, {}),
            }
            self.options[task] = mine
        self._check()
        self.history: list[dict[str, Any]] = []  # one entry per evaluation: step, metrics

    def _check(self) -> None:
        """Every option checked now, before training starts, not at the first evaluation."""
        from evalkit.api import ATTENTION_FLAGS, RUN_SETTINGS
        from evalkit.run.attention_flags import attention_flag_requests
        from evalkit.run.evaluate import RunConfig, check_config

        for task, options in self.options.items():
            flags = {k: v for k, v in options.items() if k in ATTENTION_FLAGS}
            task_options = {k: v for k, v in options.items() if k not in ATTENTION_FLAGS and k not in RUN_SETTINGS}
            from evalkit.api import _option_value

            check_config(
                RunConfig(
                    task=task,
                    model="in-memory",
                    attention=attention_flag_requests(self.attention, **flags),
                    task_options={k: _option_value(k, v) for k, v in task_options.items()},
                )
            )

    def due(self, step: int) -> bool:
        return self.every is not None and step > 0 and step % self.every == 0

    def maybe_evaluate(self, model, tokenizer, step: int) -> dict[str, float] | None:
        """``evaluate`` when ``step`` is a multiple of ``every``, else None."""
        return self.evaluate(model, tokenizer, step) if self.due(step) else None

    def evaluate(self, model, tokenizer, step: int) -> dict[str, float]:
        """Every task on the model as it is now; returns (and logs) the headline numbers.

        A step evaluated before (a training restarted from a checkpoint) is continued if it was
        interrupted and read back if it finished."""
        from evalkit.api import evaluate, load_run
        from evalkit.report.headline import headline_metrics
        from evalkit.run.track import is_finished, run_folder, tag_run

        metrics: dict[str, float] = {}
        for task in self.tasks:
            folder = run_folder(self.out, self.series, step, task)
            started = time.perf_counter()
            if is_finished(folder):
                run = load_run(folder)
            else:
                run = evaluate(
                    model,
                    tokenizer,
                    task=task,
                    attention=self.attention,
                    out=folder,
                    resume=folder.exists(),
                    progress=False,
                    distributed=self.distributed,
                    **self.options[task],
                )
                if run.interrupted:
                    raise KeyboardInterrupt
                if run.rows is None:  # a non-zero rank of a distributed evaluation: rank 0 reports
                    continue
                tag_run(folder, step, self.series)
            seconds = time.perf_counter() - started
            named = {f"evalkit/{task}/{k}": v for k, v in headline_metrics(run.summary, task, self.bounds).items()}
            metrics.update({**named, f"evalkit/{task}/seconds": round(seconds, 3)})
        self.history.append({"step": step, "metrics": metrics})
        if self.log is not None and metrics:
            self.log(metrics, step)
        return metrics
