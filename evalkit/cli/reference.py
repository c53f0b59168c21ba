"""``evalkit reference``: the reference Softmax/SSMax model pair and the study built on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from evalkit.cli.common import DeviceOption, new_group, user_errors

reference_app = new_group("The reference Softmax/SSMax model pair, trained from scratch in minutes.")


@reference_app.command("train")
@user_errors
def reference_train(
    out: Annotated[str, typer.Option(help="Folder for the pair: OUT/softmax and OUT/ssmax.")] = "ckpt/ref",
    recipe: Annotated[str, typer.Option(help="cpu (small, under 15 min on 2 cores) or gpu (the H100 recipe).")] = "cpu",
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the recipe's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialization and data.")] = 0,
    device: DeviceOption = "auto",
    positions: Annotated[
        str,
        typer.Option(
            help="rope (RoPE on every layer), nope (no positional encoding) or irope (local RoPE layers with a "
            "sliding window + global NoPE layers)."
        ),
    ] = "rope",
    window: Annotated[
        Optional[int],
        typer.Option(help="irope: keys a local layer sees, at most the training length (default: the recipe's)."),
    ] = None,
    pattern: Annotated[
        Optional[str],
        typer.Option(
            help="irope: layer kinds repeated to the layer count, l = local RoPE, g = global NoPE (default: the "
            "recipe's, lg)."
        ),
    ] = None,
    save_every: Annotated[
        Optional[int],
        typer.Option(
            help="Also save both models every N steps as OUT/checkpoints/{softmax,ssmax}/checkpoint-N (for evalkit "
            "track)."
        ),
    ] = None,
    arch: Annotated[
        str,
        typer.Option(
            help="Arms, comma-separated: softmax,ssmax (the pair, trained together) and/or multiscreen "
            "(OUT/multiscreen, "
            "same data, tokens and steps)."
        ),
    ] = "softmax,ssmax",
) -> None:
    """Train two tiny models that differ only in attention (Softmax vs learnable SSMax) on ABCDigits, and/or a
    tiny Multiscreen on the same batches."""
    from evalkit.reference import train_reference_pair
    from evalkit.reference.study_layout import StudySettings

    arches = _arches(arch)
    StudySettings(arches=arches).check()  # softmax and ssmax together, known names
    if "softmax" in arches:
        summary = train_reference_pair(
            Path(out),
            recipe=recipe,
            steps=steps,
            seed=seed,
            device=device,
            log=typer.echo,
            positions=positions,
            window=window,
            pattern=pattern,
            save_every=save_every,
        )
        typer.echo(json.dumps(summary, indent=2, default=str))
    if "multiscreen" in arches:
        from evalkit.reference.screening import train_multiscreen
        from evalkit.reference.train import get_recipe

        chosen = get_recipe(recipe, positions)
        changes = {k: v for k, v in (("steps", steps), ("window", window), ("pattern", pattern)) if v is not None}
        summary = train_multiscreen(
            Path(out), recipe=chosen.replace(**changes) if changes else chosen, seed=seed, device=device, log=typer.echo
        )
        typer.echo(json.dumps(summary, indent=2, default=str))


def _arches(arch: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in arch.split(",") if a.strip())


@reference_app.command("study")
@user_errors
def reference_study(
    out: Annotated[str, typer.Option(help="Study folder: models/, runs/, figures/, report.md.")] = "results/ref-study",
    positions: Annotated[
        str, typer.Option(help="Position schemes, comma-separated: rope, nope, irope.")
    ] = "rope,irope",
    seeds: Annotated[str, typer.Option(help="Training seeds, comma-separated.")] = "0,1,2",
    recipe: Annotated[
        str,
        typer.Option(
            help="cpu or gpu (each position scheme takes its tuned variant, e.g. cpu-irope, when one exists)."
        ),
    ] = "cpu",
    steps: Annotated[Optional[int], typer.Option(help="Training steps for every pair (default: the recipes').")] = None,
    needle_trials: Annotated[int, typer.Option(help="Needle trials per (length, depth).")] = 20,
    focus_trials: Annotated[int, typer.Option(help="Focus trials per (length, depth).")] = 4,
    perplexity_samples: Annotated[int, typer.Option(help="Perplexity windows per length.")] = 8,
    arch: Annotated[
        str, typer.Option(help="Arms, comma-separated: softmax,ssmax (the pair) and/or multiscreen.")
    ] = "softmax,ssmax",
    factors: Annotated[
        str, typer.Option(help="Evaluation lengths as multiples of the training length, e.g. 1,2,4,8,16,32.")
    ] = "1,2,4,8,16",
    depths: Annotated[
        str, typer.Option(help="Needle depths in percent (the Multiscreen paper: 10:90:20).")
    ] = "0:100:25",
    device: DeviceOption = "auto",
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted study (finished pairs and runs are always reused).")
    ] = False,
) -> None:
    """Train every Softmax/SSMax pair (and Multiscreen arm), run needle, focus and perplexity on each model, write
    report.md."""
    from evalkit.core.errors import ConfigError
    from evalkit.reference.study import run_study
    from evalkit.reference.study_layout import StudySettings

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise ConfigError(f"bad --seeds {seeds!r}", "give integers, e.g. 0,1,2") from None
    try:
        factor_list = tuple(int(f) for f in factors.split(","))
    except ValueError:
        raise ConfigError(f"bad --factors {factors!r}", "give integers, e.g. 1,2,4,8,16,32") from None
    settings = StudySettings(
        arches=_arches(arch),
        factors=factor_list,
        depths=depths,
        positions=tuple(p.strip() for p in positions.split(",") if p.strip()),
        seeds=seed_list,
        recipe=recipe,
        steps=steps,
        needle_trials=needle_trials,
        focus_trials=focus_trials,
        perplexity_samples=perplexity_samples,
    )
    typer.echo(str(run_study(Path(out), settings, device=device, resume=resume, log=typer.echo)))


def register(app: typer.Typer) -> None:
    app.add_typer(reference_app, name="reference")
