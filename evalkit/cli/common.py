"""What every command group shares: a console that prints text as text, one-line user errors with
exit 2, the option types several commands take, tables, and the command that continues a run."""

from __future__ import annotations

import functools
import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from evalkit.core.errors import EvalkitError


def new_group(help: str) -> typer.Typer:
    """A command group with evalkit's settings: help in panels, no locals in tracebacks."""
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_show_locals=False)


def plain_help_text() -> None:
    """Help text printed as text. typer draws help panels (``rich_help_panel``) only in its rich
    mode, which reads every help string as markup: ``[default: all]`` vanishes and ``0:100:25``
    becomes an emoji. Keep the panels, render the strings as plain text."""
    import inspect

    from rich.text import Text
    from typer import rich_utils

    def plain(*, text: str, style: str = "", markup_mode=None):
        return rich_utils.highlighter(Text(inspect.cleandoc(text), style=style))

    if hasattr(rich_utils, "_make_rich_text"):
        rich_utils._make_rich_text = plain


def make_console(stderr: bool = False):
    """A rich console that prints text as text: paths, commands and option values such as
    ``--depths 0:100:25`` must not turn into emoji (``:100:``) or lose ``[...]`` as markup."""
    from rich.console import Console

    console = Console(stderr=stderr, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = max(console.width, 140)  # logs and pipes: don't squeeze tables to 80 columns
    return console


def user_errors(fn):
    """Print a user mistake as one line and exit 2; Ctrl-C outside a run exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EvalkitError as exc:
            from rich.text import Text

            line = Text.assemble(("error:", "bold red"), " ", exc.one_line())
            make_console(stderr=True).print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            stage = interrupted_stage(exc)
            make_console(stderr=True).print("interrupted" + (f" while {stage}" if stage else ""), highlight=False)
            raise typer.Exit(130) from None

    return wrapper


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class CheckDType(str, Enum):
    """``attention check`` also runs in float64, to show the fused path's float64 deviations."""

    float32 = "float32"
    float64 = "float64"
    bfloat16 = "bfloat16"
    float16 = "float16"


# Option types several commands share: one help text each.
ModelOption = Annotated[str, typer.Option(help="Model (path, .gguf or alias).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DTypeOption = Annotated[DType, typer.Option(help="auto = bfloat16 on CUDA, float32 on CPU.")]


def continue_command(out=None) -> str:
    """The command line that continues this command: what the user typed (as parsed, so shell
    quoting cannot drift) with --resume, and --out pinned to the folder the run went to."""
    try:  # typer >= 0.2x runs on its own vendored copy of click
        from typer._click.core import ParameterSource
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
        from click.core import ParameterSource

    ctx = get_current_context()
    words = ["evalkit", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        if param.name in ("resume", "out") or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False) and param.secondary_opts:  # --x/--no-x
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "is_flag", False):
            words += [param.opts[0]] if value else []
        else:
            for item in value if getattr(param, "multiple", False) else [value]:
                words += [param.opts[0], str(getattr(item, "value", item))]
    out = out if out is not None else ctx.params.get("out")
    return shlex.join(words + (["--out", str(out)] if out is not None else []) + ["--resume"])


def print_continue(console, what: str, out) -> None:
    console.print(f"{what}; continue with:\n  {continue_command(out)}", highlight=False, soft_wrap=True)


# Where a Ctrl-C that escaped a run landed, read from its traceback (innermost evalkit frame first):
# (module prefixes, function names, what the user is told was interrupted).
_STAGES = (
    (("evalkit.models.loading", "evalkit.models.fetch", "evalkit.backends"), (), "loading the model"),
    ((), ("load_for",), "loading the model"),
    (("evalkit.data", "tasks."), ("samples", "_check_lengths"), "building the samples"),
    (("evalkit.store",), (), "writing the run folder"),
)


def interrupted_stage(exc: BaseException) -> str | None:
    """What a KeyboardInterrupt stopped ("loading the model", ...), or None when no known step was running."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        module, name = frame.f_globals.get("__name__", ""), frame.f_code.co_name
        for prefixes, names, stage in _STAGES:
            if (prefixes and module.startswith(prefixes)) or name in names:
                return stage
    return None


def finished_rows(folder) -> bool:
    """Whether a run folder (or a folder of run folders: several models, a sweep) holds finished samples:
    a non-empty journal (``evalkit.store.results.RunStore`` writes one line per finished sample)."""
    if folder is None or not Path(folder).is_dir():
        return False
    journals = [*Path(folder).glob("journal*.jsonl"), *Path(folder).glob("*/journal*.jsonl")]
    return any(path.stat().st_size > 0 for path in journals)


def print_interrupted(console, exc: KeyboardInterrupt, out) -> None:
    """A Ctrl-C that stopped a run before or after its samples ran: what it stopped, and a --resume
    command only where a folder holds finished rows to continue from (else nothing was written)."""
    stage = f" while {interrupted_stage(exc) or 'preparing the run'}"
    if finished_rows(out):
        print_continue(console, f"interrupted{stage}; the finished samples in {out} are kept", out)
    else:
        where = f" ({out} was not created)" if out is not None and not Path(out).exists() else ""
        console.print(f"interrupted{stage}: nothing was written{where}", highlight=False, soft_wrap=True)


def print_frame(console, frame, title: str) -> None:
    from evalkit.report.render import terminal_table

    shown = frame.astype(object).map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    numeric = {c for c in frame.columns if frame[c].dtype.kind in "fiu"}
    console.print(terminal_table(shown, title, left={c for c in frame.columns if c not in numeric}))
