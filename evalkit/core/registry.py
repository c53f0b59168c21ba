"""The task registry: plugins are found through the ``evalkit.tasks`` entry-point group.

evalkit's own tasks register themselves in pyproject.toml the same way an external package
would, so there is one way to add a task. A plugin that fails to import raises its real error.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from evalkit.core.errors import ConfigError, did_you_mean

GROUP = "evalkit.tasks"


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def task_names() -> list[str]:
    return sorted(_entry_points())


def get_task(name: str):
    eps = _entry_points()
    if name not in eps:
        hint = (
            did_you_mean(name, eps).strip()
            or f"known tasks: {', '.join(sorted(eps)) or 'none (is evalkit installed? pip install -e .)'}"
        )
        raise ConfigError(f"unknown task {name!r}", hint)
    return eps[name].load()
