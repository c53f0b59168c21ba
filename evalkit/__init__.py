"""evalkit: a long-context evaluation harness for Softmax vs Scalable-Softmax attention.

Importing this package is cheap on purpose (no torch): the CLI's ``--help`` must stay fast. The
Python API is imported on first use::

    import evalkit
    run = evalkit.evaluate(model, tokenizer, task="needle", lengths="1k..8k", trials=5)
    run.summary                     # summary.csv: headline numbers with n and 95% intervals
    evalkit.load_run("results/my-run")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it, imported when the name is first used
_LAZY = {
    "evaluate": "evalkit.api",
    "load_run": "evalkit.api",
    "Run": "evalkit.api",
    "integrations": "evalkit.integrations",
}
__all__ = ["Run", "evaluate", "integrations", "load_run", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from evalkit import integrations
    from evalkit.api import Run, evaluate, load_run


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'evalkit' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if _LAZY[name] == f"evalkit.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
