"""evalkit's own task plugins (registered in pyproject.toml under ``evalkit.tasks``)."""
