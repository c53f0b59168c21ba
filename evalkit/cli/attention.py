"""``evalkit attention``: the variants, and the fused path checked against the float64 reference on a model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from evalkit.cli.common import CheckDType, DeviceOption, ModelOption, make_console, new_group, print_frame, user_errors

attention_app = new_group("Attention variants: list them, check the fused path on a model.")


@attention_app.command("list")
def attention_list() -> None:
    """The attention variants, their formulas and parameters."""
    import pandas as pd

    from evalkit.attention.variants import describe_variants

    frame = pd.DataFrame(describe_variants())
    frame["parameters"] = [
        " ".join(f"{p}={d[p]}" if p in d else p for p in ps) or "-"
        for ps, d in zip(frame["parameters"], frame["defaults"])
    ]
    print_frame(make_console(), frame[["name", "formula", "n", "parameters", "description"]], "attention variants")
    typer.echo(
        "n_i = number of keys query i may attend to (--ssmax-n position), or the whole row (--ssmax-n length); "
        "pos_i = the query's absolute position (0-based, as position_ids give it). "
        "--attention-layers all|nope|rope|0,2,5 puts a variant on some layers only. "
        "native = the checkpoint as shipped, with the scaling its modelling code applies to q (Llama 4, "
        "Ministral 3, Mistral 4); every other variant switches that scaling off and replaces it."
    )


@attention_app.command("check")
@user_errors
def attention_check(
    model: ModelOption = "smollm2-135m",
    attention: Annotated[
        str, typer.Option(help="Variants to check, comma-separated (auto = the checkpoint's).")
    ] = "auto",
    ssmax_s: Annotated[Optional[float], typer.Option(help="SSMax scale s for every head.")] = None,
    ssmax_b: Annotated[Optional[float], typer.Option(help="SSMax bias b for every head.")] = None,
    attention_params: Annotated[Optional[str], typer.Option(help="Per-layer/head s and b tables file.")] = None,
    train_length: Annotated[Optional[str], typer.Option(help="Training length L for logn.")] = None,
    ssmax_n: Annotated[Optional[str], typer.Option(help="n convention: position or length.")] = None,
    attn_scale: Annotated[Optional[float], typer.Option(help="llama4-temp: attn_scale [default 0.1].")] = None,
    floor_scale: Annotated[Optional[float], typer.Option(help="llama4-temp: floor_scale [default 8192].")] = None,
    beta: Annotated[Optional[float], typer.Option(help="mistral-beta: beta [default 0.1].")] = None,
    original_length: Annotated[
        Optional[str], typer.Option(help="mistral-beta: original length [default: max_position_embeddings].")
    ] = None,
    attention_layers: Annotated[Optional[str], typer.Option(help="all, nope, rope or indices like 0,2,5.")] = None,
    length: Annotated[str, typer.Option(help="Tokens of built-in corpus text to run.")] = "256",
    device: DeviceOption = "cpu",
    dtype: Annotated[
        CheckDType, typer.Option(help="Model dtype for the fused path; float64 shows float64 deviations.")
    ] = CheckDType.float32,
) -> None:
    """Max deviation of evalkit's fused attention from a float64 reference, on your model."""
    import pandas as pd
    import torch

    from evalkit.attention import check_model
    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.grid import parse_length
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.models.loading import LoadOptions
    from evalkit.run.attention_flags import VariantRequest, attention_flag_requests, resolve_variants

    backend = TransformersBackend.load(model, LoadOptions(device=device, dtype=dtype.value), log=typer.echo)
    requests = attention_flag_requests(
        attention,
        ssmax_s,
        ssmax_b,
        attention_params,
        train_length,
        ssmax_n,
        attn_scale=attn_scale,
        floor_scale=floor_scale,
        beta=beta,
        original_length=original_length,
        attention_layers=attention_layers,
    )
    variants = resolve_variants(backend, [VariantRequest.from_dict(r) for r in requests])
    tokens = token_stream(load_corpus(), backend.tokenizer).tokens[: parse_length(length)]
    ids = torch.from_numpy(tokens)[None].to(backend.device)
    rows = []
    for variant in variants:
        backend.activate(variant)
        rows.append(check_model(backend.model, ids))
    print_frame(make_console(), pd.DataFrame(rows), f"fused vs float64 reference, {len(tokens)} tokens")


def register(app: typer.Typer) -> None:
    app.add_typer(attention_app, name="attention")
