"""The ``evalkit`` command line: one typer app assembling the command groups in ``evalkit.cli``.

Each group lives in its own module (``run``, ``models``, ``report``, ``reference``, ``attention``,
``bench``); a command parses its options, calls one evalkit function and prints. Heavy modules
(torch, transformers, pandas) are imported inside the commands that need them, so
``evalkit --help`` stays instant. ``evalkit run TASK`` commands are generated from each task
plugin's options dataclass, so a plugin's options appear on the command line by themselves.
"""

from __future__ import annotations

import typer

from evalkit.cli import attention, bench, models, reference, report, run

app = typer.Typer(
    rich_markup_mode=None,
    help="Long-context evaluation harness: Softmax vs Scalable-Softmax attention.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
for group in (run, models, report, reference, attention, bench):
    group.register(app)


def register_tasks() -> typer.Typer:
    """Add one ``run`` command per installed task plugin (once); returns the app."""
    run.add_task_commands()
    return app


def main() -> None:
    register_tasks()()


if __name__ == "__main__":
    main()
