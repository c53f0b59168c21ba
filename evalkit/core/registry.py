"""Plugin registries: tasks and backends are found through entry-point groups.

evalkit's own tasks (``evalkit.tasks``) and backends (``evalkit.backends``) register themselves in
pyproject.toml the same way an external package would, so there is one way to add either. A plugin
that fails to import raises its real error.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from evalkit.core.errors import ConfigError, did_you_mean


class Registry:
    """Named plugins of one kind, read from an entry-point group (plus any registered at run time)."""

    def __init__(self, group: str, kind: str):
        self.group = group
        self.kind = kind
        self._added: dict[str, object] = {}

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._added))

    def register(self, name: str, plugin) -> None:
        """Add a plugin at run time (a notebook's or a test's own), as if it had an entry point."""
        self._added[name] = plugin

    def unregister(self, name: str) -> None:
        self._added.pop(name, None)

    def get(self, name: str):
        if name in self._added:
            return self._added[name]
        eps = self._entry_points()
        if name not in eps:
            known = self.names()
            hint = (
                did_you_mean(name, known).strip()
                or f"known {self.kind}s: {', '.join(known) or 'none (is evalkit installed? pip install -e .)'}"
            )
            raise ConfigError(f"unknown {self.kind} {name!r}", hint)
        return eps[name].load()


TASKS = Registry("evalkit.tasks", "task")
BACKENDS = Registry("evalkit.backends", "backend")


def task_names() -> list[str]:
    return TASKS.names()


def get_task(name: str):
    return TASKS.get(name)
