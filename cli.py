"""The ``evalkit`` command line: one typer app assembling the command groups in ``evalkit.cli``.

Each group lives in its own module (``run``, ``models``, ``report``, ``reference``, ``attention``,
``bench``); a command parses its options, calls one evalkit function and prints. Heavy modules
(torch, transformers, pandas) are imported inside the commands that need them, so
``evalkit --help`` stays instant. ``evalkit run TASK`` commands are generated from each task
plugin's options dataclass and the run settings (``evalkit.core.settings``), so a plugin's options
appear on the command line by themselves.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from evalkit.cli import attention, bench, models, reference, report, run
from evalkit.cli.common import plain_help_text

# `evalkit --help` lists commands as a user meets them: run, read the result, gate it in CI, draw
# it; then the larger workflows; then what inspects the installation. Unlisted commands come last.
COMMAND_ORDER = (
    "run",
    "compare",
    "gate",
    "plot",
    "plan",
    "track",
    "sweep",
    "export",
    "tasks",
    "backends",
    "models",
    "attention",
    "bench",
    "reference",
)


class _Ordered(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        known = super().list_commands(ctx)
        return sorted(known, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

    def get_command(self, ctx, name: str):
        """The command, its summary the docstring's first paragraph on one line (never cut mid-line)."""
        command = super().get_command(ctx, name)
        if command is not None and not command.short_help and command.help:
            command.short_help = " ".join(command.help.strip().split("\n\n")[0].split())
        return command


app = typer.Typer(
    cls=_Ordered,
    help="Long-context evaluation harness: Softmax vs Scalable-Softmax attention.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
for group in (run, models, report, reference, attention, bench):
    group.register(app)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"evalkit {version('evalkit')}")
        except PackageNotFoundError:  # a source tree that was never installed
            from evalkit import __version__

            typer.echo(f"evalkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", help="Print evalkit's version and exit.", callback=_print_version, is_eager=True),
    ] = None,
) -> None:
    """Long-context evaluation harness: Softmax vs Scalable-Softmax attention."""


def register_tasks() -> typer.Typer:
    """Add one ``run`` command per installed task plugin (once); returns the app."""
    plain_help_text()
    run.add_task_commands()
    return app


def main() -> None:
    register_tasks()()


if __name__ == "__main__":
    main()
