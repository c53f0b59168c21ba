"""evalkit inside a training loop: a Hugging Face ``TrainerCallback`` and a helper for plain loops.

Why a package of its own: these are the parts that know about training frameworks; the engine
does not. Names load on first use, so ``import evalkit.integrations`` imports neither torch nor
transformers, and no logger (TensorBoard, Weights & Biases, MLflow) is ever required: the
callback logs through whatever the Trainer's ``report_to`` set up.

- ``EvalkitCallback(tasks=["needle"], every=500, lengths="1k..8k")``: ``Trainer(callbacks=[...])``.
- ``TrainingEvaluator(tasks=..., every=..., out=..., log=writer_fn)``: in a loop of your own,
  ``evaluator.maybe_evaluate(model, tokenizer, step)``.
- ``headline_metrics(summary, task)``: the ``<metric>@<length>`` numbers both log.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "EvalkitCallback": "evalkit.integrations.hf",
    "TrainingEvaluator": "evalkit.integrations.loop",
    "headline_metrics": "evalkit.report.headline",
    "metric_names": "evalkit.report.headline",
}
__all__ = ["EvalkitCallback", "TrainingEvaluator", "headline_metrics", "metric_names"]

if TYPE_CHECKING:
    from evalkit.integrations.hf import EvalkitCallback
    from evalkit.integrations.loop import TrainingEvaluator
    from evalkit.report.headline import headline_metrics, metric_names


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'evalkit.integrations' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
