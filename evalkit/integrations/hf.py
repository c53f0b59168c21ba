"""``EvalkitCallback``: evalkit's numbers logged next to the loss of a Hugging Face ``Trainer``.

    trainer = Trainer(model, args, train_dataset=..., processing_class=tokenizer,
                      callbacks=[EvalkitCallback(tasks=["needle"], every=500, lengths="256,512,1k")])

Every ``every`` steps (or at each checkpoint save, ``every="save"``), the model the Trainer
holds is evaluated in memory (``evalkit.integrations.TrainingEvaluator``): no checkpoint is
written or reloaded, and the model is handed back as found. Runs go to
``<output_dir>/evalkit/<series>/step-<N>/<task>/`` (``evalkit track``'s layout), and the headline
numbers, ``evalkit/<task>/<metric>@<length>`` plus ``evalkit/<task>/seconds``, go through
``Trainer.log``: to every ``report_to`` logger (TensorBoard, W&B, MLflow...) at the current step,
and into ``state.log_history``. Events carry no reference to the Trainer, so the callback finds
the one that calls it on the call stack once (or takes ``trainer=``).

Rank 0 alone evaluates by default (``state.is_world_process_zero``; the other ranks go on
training); ``distributed=True`` has every rank take a shard of the samples.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from evalkit.core.errors import ConfigError


class EvalkitCallback(TrainerCallback):
    """Evaluate ``tasks`` every ``every`` steps (an int) or at each save (``"save"``) during training.

    ``out``: the runs' folder (default ``<output_dir>/evalkit``); ``at_start``: also evaluate before
    the first step (step 0); ``tokenizer``: when the Trainer has no ``processing_class``; other
    keywords as ``TrainingEvaluator`` (task options such as ``lengths``, ``trials``; ``attention``,
    ``task_options``, ``small_grid``, ``bounds``, ``distributed``, ``series``)."""

    def __init__(
        self,
        tasks: Sequence[str] = ("needle",),
        every: int | str = "save",
        *,
        out: str | Path | None = None,
        at_start: bool = False,
        tokenizer: Any = None,
        trainer: Any = None,
        **options: Any,
    ):
        from evalkit.integrations.loop import TrainingEvaluator

        if every != "save" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(
                f"bad every={every!r}", 'give a number of steps, or "save" to evaluate at each checkpoint save'
            )
        self.every, self.at_start, self.tokenizer, self.trainer = every, at_start, tokenizer, trainer
        self._out = out
        self._options = {"tasks": tasks, **options}
        self.evaluator = TrainingEvaluator(
            every=None, out=out or "results/training", **self._options
        )  # checks options now
        self._evaluated: set[int] = set()

    @property
    def history(self) -> list[dict]:
        """One entry per evaluation on this process: step and its metrics."""
        return self.evaluator.history

    def on_train_begin(self, args, state, control, **kwargs):
        if self._out is None:  # the Trainer's output folder is known only now
            self.evaluator.out = Path(args.output_dir) / "evalkit"
        if self.trainer is None:
            self.trainer = _calling_trainer()
        if self.at_start and state.global_step == 0:
            self._evaluate(args, state, kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if isinstance(self.every, int) and state.global_step % self.every == 0:
            self._evaluate(args, state, kwargs)

    def on_save(self, args, state, control, **kwargs):
        if self.every == "save":
            self._evaluate(args, state, kwargs)

    def _evaluate(self, args, state, kwargs) -> None:
        step = int(state.global_step)
        if step in self._evaluated:
            return
        self._evaluated.add(step)
        if not (state.is_world_process_zero or self.evaluator.distributed):
            return
        model = kwargs.get("model")
        tokenizer = self.tokenizer or kwargs.get("processing_class")
        if tokenizer is None or not hasattr(tokenizer, "encode"):
            raise ConfigError(
                "EvalkitCallback needs the model's tokenizer",
                "pass processing_class=tokenizer to the Trainer, or tokenizer= to the callback",
            )
        metrics = self.evaluator.evaluate(model, tokenizer, step)
        if metrics and state.is_world_process_zero:
            if self.trainer is not None:
                self.trainer.log(dict(metrics))  # every report_to logger, at state.global_step
            else:
                state.log_history.append({**metrics, "step": step})


def _calling_trainer():
    """The ``transformers.Trainer`` whose callback handler is calling us, from the call stack (None if none)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None
