"""``evalkit bench suite``: every registered bench on a preset grid, one ``report.md`` and a CSV per bench.

A preset names the device, the dtype, the models (a checkpoint, or a random-weight shape written
once into a cache: speed does not depend on the weights), the context lengths of each bench and
the time budget it was sized for. The registry is a list of (name, function, preset arguments):
a new bench joins the suite with one ``SuiteBench`` entry. Figures are ratios recorded by the
benches themselves (round-robin medians); nothing here times anything but the wall clock of each job.
"""

from __future__ import annotations

import inspect
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.bench import timing
from evalkit.bench.focus import bench_focus
from evalkit.bench.needle import bench_needle
from evalkit.bench.perplexity import bench_perplexity
from evalkit.bench.screening import bench_screening
from evalkit.core.errors import ConfigError, did_you_mean

SSMAX_S = 0.43  # SmolLM2's s in the design notes; any s costs the same, it is one factor on q


def _ssmax_pair():
    from evalkit.run.attention_flags import AttentionOptions, VariantRequest

    return [VariantRequest("softmax"), VariantRequest("ssmax", AttentionOptions(s=SSMAX_S))]


@dataclass(frozen=True)
class SuiteModel:
    """A model of a preset: a checkpoint spec, or a random-weight ``shape`` (evalkit/models/shapes.py)."""

    label: str
    lengths: dict[str, str]  # bench name -> lengths; "*" for every other bench
    spec: str | None = None
    shape: str | None = None
    layers: int | None = None  # fewer layers than the shape (tests only: a preset keeps the real depth)
    benches: tuple[str, ...] | None = None  # only these benches (None: every bench that is not opt-in)

    def lengths_for(self, bench_name: str) -> str:
        return self.lengths.get(bench_name, self.lengths["*"])


@dataclass(frozen=True)
class Preset:
    name: str
    device: str
    dtype: str
    budget_s: float  # the wall time the grid was sized for, on the device the preset names
    models: tuple[SuiteModel, ...]
    sized_for: str  # the machine budget_s refers to
    probe_size: int | None = None  # matmul probe of the measured peak (None: the bench's default)


@dataclass(frozen=True)
class SuiteBench:
    """One bench of the suite: ``run(model=, lengths=, [device=, dtype=, out=, peak=,] **args[preset])``
    returns its rows; ``summary`` turns them into the report's table (ratios vs peers and the peak)."""

    name: str
    run: Callable
    args: dict[str, dict]  # preset name -> keyword arguments; a preset without an entry skips the bench
    summary: Callable | None = None
    opt_in: bool = False  # runs only for the models that name it in ``SuiteModel.benches``


def _perplexity_summary(frame):
    """Per model and length: evalkit's scored tokens/s per variant, and how many times each peer's
    (plain transformers, lm-eval) it is; MFU against the measured peak. Ratios of the recorded rates."""
    import pandas as pd

    rows = []
    for (model, length), group in frame.groupby(["model", "context_length"], sort=False):
        peers = group.attention.str.startswith(("plain transformers", "lm-eval"))
        ours, theirs = group[~peers], group[peers]
        first = ours.iloc[0]
        row = {"model": model, "context_length": length, "batch": int(first.batch)}
        for mode in ours.itertuples():
            row[f"{mode.attention} tok/s"] = mode.scored_tokens_per_s
            row[f"{mode.attention} MFU"] = mode.mfu
        for mode in ours.iloc[1:].itertuples():
            row[f"{mode.attention} vs {first.attention}"] = round(
                mode.scored_tokens_per_s / first.scored_tokens_per_s, 3
            )
        for peer, name in (("plain transformers", "plain"), ("lm-eval", "lm-eval")):
            match = theirs[theirs.attention.str.startswith(peer)]
            if len(match):
                rate = match.scored_tokens_per_s.iloc[0]
                row[f"{name} tok/s"] = rate
                row[f"evalkit vs {name}"] = round(first.scored_tokens_per_s / rate, 3)
        row["tokens computed/scored (evalkit)"] = f"{first.tokens_computed}/{first.tokens_scored}"
        row["peak TFLOP/s"] = first.peak_tflops
        rows.append(row)
    return pd.DataFrame(rows)


def _needle_summary(frame):
    keep = [
        "model",
        "context_length",
        "samples",
        "tokens_computed_shared",
        "auto_samples_per_s",
        "generate_samples_per_s",
        "shared_vs_batched",
        "shared_vs_generate",
        "auto_vs_faster",
        "auto_walked",
        "verdicts_agree",
        "accuracy",
    ]
    table = frame[keep].copy()
    # the generate loop is the peer here; the row 'all' compares against the sum of its per-length medians
    table.insert(6, "auto_vs_generate", (frame.auto_samples_per_s / frame.generate_samples_per_s).round(2))
    return table


def _focus_summary(frame):
    return frame.drop(columns=["device"])


def _queries(model: str, lengths: str, device: str, dtype: str, out: str | None, rounds: int):
    """The queries bench takes one haystack length a call: one call per length of the grid."""
    import pandas as pd

    from evalkit.bench.queries import bench_queries
    from evalkit.core.grid import parse_lengths

    frames = [bench_queries(model, n, device, dtype, None, out, rounds=rounds) for n in parse_lengths(lengths)]
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["caption"] = " | ".join(f.attrs.get("caption", "") for f in frames)
    return frame


def _nested(
    model: str,
    lengths: str,
    device: str,
    dtype: str,
    out: str | None,
    samples: int,
    rounds: int,
    allow_extrapolation: bool = False,
):
    from evalkit.bench.nested import bench_nested

    return bench_nested(
        model, lengths, device, dtype, out, samples=samples, rounds=rounds, allow_extrapolation=allow_extrapolation
    )


def _screening(lengths: str, device: str, dtype: str, out: str | None, **kwargs):
    """The screening bench builds its own random models (the paper's shape for psi, and a softmax
    Transformer of the same width and depth): the preset's model only lends its lengths."""
    return bench_screening(lengths, device, dtype, out=out, **kwargs)


def _screening_summary(frame):
    return frame.drop(columns=["device"], errors="ignore")


def _backends(model: str, lengths: str, device: str, dtype: str, out: str | None, **args):
    """RULER and needle generation on the vLLM backend (random weights read as ``load_format="dummy"``)."""
    import importlib.util

    import pandas as pd

    from evalkit.bench.backends import bench_backends

    if importlib.util.find_spec("vllm") is None:  # the rest of the suite still runs
        return pd.DataFrame([{"note": "vLLM is not installed here: pip install -e '.[vllm]' (docs/commands.md)"}])
    return bench_backends(model, lengths, device=device, dtype=dtype, out=out, **args)


REGISTRY: list[SuiteBench] = [
    SuiteBench(
        "perplexity",
        bench_perplexity,
        {
            "cpu": dict(seconds=6.0, batch_tokens=2048, attention="ssmax-pair"),
            "gpu": dict(seconds=2.0, batch_tokens=131072, attention="ssmax-pair"),  # 2-4 x 32k windows: ~1 s a call
            "smoke": dict(seconds=0.3, batch_tokens=None, attention="ssmax-pair"),
        },
        _perplexity_summary,
    ),
    SuiteBench(
        "needle",
        bench_needle,
        {
            "cpu": dict(depths="50", trials=2, batch_tokens=None),
            "gpu": dict(depths="0:100:50", trials=1, batch_tokens=None),
            "smoke": dict(depths="50", trials=1, batch_tokens=None),
        },
        _needle_summary,
    ),
    SuiteBench(
        "focus",
        bench_focus,
        {
            "cpu": dict(seconds=3.0),
            "gpu": dict(seconds=1.5),
            "smoke": dict(seconds=0.3),
        },
        _focus_summary,
    ),
    SuiteBench(
        "nested",
        _nested,
        {
            "cpu": dict(samples=1, rounds=2),
            "gpu": dict(
                samples=2, rounds=3, allow_extrapolation=True
            ),  # the SmolLM2 shape's grid reaches 64k, past its 8k
            "smoke": dict(samples=1, rounds=1),
        },
    ),
    SuiteBench(
        "screening",
        _screening,
        {
            # psi 8 (the 4M shape): 4k..32k is about 2 CPU minutes on 2 cores; the paper's 100k on a GPU
            # at its base shape (psi 32, 286M with the paper's vocabulary; 512 tokens here)
            "cpu": dict(psi=8, rounds=1, budget_s=240.0, first_model_only=True),
            "gpu": dict(psi=32, rounds=3, budget_s=120.0, first_model_only=True),
            "smoke": dict(psi=4, rounds=1, budget_s=30.0, first_model_only=True),
        },
        _screening_summary,
    ),
    SuiteBench(
        "queries",
        _queries,
        {
            "cpu": dict(rounds=2),
            "gpu": dict(rounds=3),
            "smoke": dict(rounds=1),
        },
    ),
    SuiteBench(
        "backends",
        _backends,
        {
            # how long RULER at 32k-128k takes on one card: 11 offline tasks x 2 samples, greedy to the budget
            # (random weights rarely stop early), one needle trial per depth; vLLM only
            "gpu": dict(
                samples=2,
                needle_trials=1,
                needle_depths="0:100:50",
                backends=("vllm",),
                engine=dict(load_format="dummy", max_model_len=131072, gpu_memory_utilization=0.85),
            ),
        },
        opt_in=True,
    ),
]


SMOLLM2_GPU_LENGTHS = {
    "*": "2k,4k,8k,16k,32k,64k",
    "needle": "2k,8k,32k",
    "focus": "2k,16k,64k",
    "queries": "8k",
    "nested": "1k..32k",
}

PRESETS: dict[str, Preset] = {
    # SmolLM2-135M fp32 at ~300 tokens/s: perplexity 2 lengths x 4 contenders, needle 4 samples,
    # focus 2 lengths; the estimate in NOTES-bench17.md adds up to about 10 minutes
    "cpu": Preset(
        "cpu",
        "cpu",
        "float32",
        600,
        (
            SuiteModel(
                "smollm2-135m",
                {"*": "512,2k", "needle": "512,1k", "queries": "4k", "nested": "256..4k", "screening": "4k,8k,16k,32k"},
                spec="smollm2-135m",
            ),
        ),
        sized_for="2 CPU cores",
    ),
    # random weights: the Llama-3.2-1B shape at 8k and 32k, the SmolLM2 shape from 2k to 64k; bf16,
    # batched, softmax vs SSMax; about 7 minutes by the estimate in NOTES-bench17.md; then RULER and
    # needle generation on vLLM (when installed) on the Llama-3.2-1B shape at 32k-128k, a few minutes more
    "gpu": Preset(
        "gpu",
        "cuda",
        "bfloat16",
        720,
        (
            SuiteModel(
                "llama-1b shape (random weights)",
                {"*": "8k,32k", "queries": "8k", "nested": "1k..32k", "screening": "4k,16k,32k,64k,100k"},
                shape="llama-1b",
            ),
            SuiteModel("smollm2-135m shape (random weights)", SMOLLM2_GPU_LENGTHS, shape="smollm2-135m"),
            SuiteModel(
                "llama-1b shape (random weights), vLLM",
                {"*": "32k,64k,128k"},
                shape="llama-1b",
                benches=("backends",),
            ),
        ),
        sized_for="one H100",
    ),
    # a look at every table in about a minute on 2 cores; its figures are too short to quote
    "smoke": Preset(
        "smoke",
        "cpu",
        "float32",
        90,
        (
            SuiteModel(
                "smollm2-135m",
                {"*": "256", "queries": "1k", "nested": "128..512", "screening": "1k"},
                spec="smollm2-135m",
            ),
        ),
        sized_for="2 CPU cores",
        probe_size=1024,
    ),
}


@dataclass
class Job:
    bench: SuiteBench
    model: SuiteModel
    kwargs: dict
    seconds: float | None = None


@dataclass
class Plan:
    preset: Preset
    jobs: list[Job] = field(default_factory=list)


def plan_suite(
    preset: Preset, model: str | None = None, lengths: str | None = None, benches: list[SuiteBench] | None = None
) -> Plan:
    """Every (model, bench) job of a preset with its exact keyword arguments; ``model`` replaces the
    preset's models by one checkpoint (with the first model's lengths), ``lengths`` every bench's lengths."""
    models = preset.models
    if model:
        models = (SuiteModel(model, preset.models[0].lengths, spec=model),)
    plan = Plan(preset)
    for suite_model in models:
        for entry in benches or REGISTRY:
            if preset.name not in entry.args:
                continue
            if (suite_model.benches is not None and entry.name not in suite_model.benches) or (
                entry.opt_in and entry.name not in (suite_model.benches or ())
            ):
                continue
            args = dict(entry.args[preset.name])
            if args.pop("first_model_only", False) and suite_model is not models[0]:
                continue  # a bench that builds its own models runs once per preset
            if args.get("attention") == "ssmax-pair":
                args["attention"] = _ssmax_pair()
            args["lengths"] = lengths or suite_model.lengths_for(entry.name)
            plan.jobs.append(Job(entry, suite_model, args))
    return plan


def _checkpoint(suite_model: SuiteModel, dtype: str, tokenizer: str, checkpoints: Path, log) -> str:
    """The model spec to load: the preset's, or a random checkpoint of its shape, written once."""
    if suite_model.spec:
        return suite_model.spec
    from evalkit.models.shapes import write_random_checkpoint

    folder = checkpoints / f"{suite_model.shape}-{suite_model.layers or 'full'}-{dtype}"
    if not (folder / "config.json").exists():
        write_random_checkpoint(
            suite_model.shape,
            tokenizer,
            folder,
            layers=suite_model.layers,
            dtype=dtype if dtype != "auto" else "bfloat16",
            log=log,
        )
    return str(folder)


def _call(job: Job, spec: str, preset: Preset, peak: float):
    """Call the bench with the suite-wide arguments its signature takes, plus the preset's."""
    common = {"model": spec, "device": preset.device, "dtype": preset.dtype, "out": None, "peak": peak}
    accepted = inspect.signature(job.bench.run).parameters
    return job.bench.run(**{k: v for k, v in common.items() if k in accepted}, **job.kwargs)


def run_suite(
    plan: Plan,
    out: str | Path,
    command: str,
    tokenizer: str = "smollm2-135m",
    checkpoints: str | Path | None = None,
    log=print,
) -> dict:
    """Run every job of the plan, write OUT/bench_<name>.csv and OUT/report.md; the tables by bench name."""
    import pandas as pd
    import torch

    from evalkit.core.paths import cache_dir

    preset = plan.preset
    if preset.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"preset {preset.name!r} needs a CUDA device and torch sees none",
            "run --preset cpu here, or run on the GPU machine",
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = Path(checkpoints) if checkpoints else cache_dir("random-checkpoints")
    dtype = getattr(torch, preset.dtype)
    peak = timing.measure_peak_tflops(preset.device, dtype, preset.probe_size)
    started = time.perf_counter()
    frames: dict[str, list] = {}
    for job in plan.jobs:
        log(f"bench {job.bench.name} on {job.model.label}, lengths {job.kwargs['lengths']}")
        spec = _checkpoint(job.model, preset.dtype, tokenizer, checkpoints, log)
        job_started = time.perf_counter()
        frame = _call(job, spec, preset, peak)
        job.seconds = time.perf_counter() - job_started
        frame = frame.drop(
            columns="model", errors="ignore"
        )  # a bench may name the model itself: the preset's label counts
        frame.insert(0, "model", job.model.label)
        frames.setdefault(job.bench.name, []).append(frame)
    total = time.perf_counter() - started
    tables = {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}
    for name, table in tables.items():
        table.to_csv(out / f"bench_{name}.csv", index=False)
    (out / "report.md").write_text(render_report(plan, tables, environment(preset, peak), command, total))
    return tables


def environment(preset: Preset, peak: float) -> dict[str, str]:
    import torch

    from evalkit.store.manifest import device_description

    device = torch.device(preset.device)
    env = {"device": device_description(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["GPU"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    env["CPU"] = f"{_cpu_model()}, {os.cpu_count()} cores visible, torch uses {torch.get_num_threads()} threads"
    env["dtype"] = preset.dtype
    sheet = timing.peak_tflops(env["device"], preset.dtype)
    env["peak"] = f"{peak:.3g} TFLOP/s measured (dense {preset.dtype} matmul probe)" + (
        f"; data sheet {sheet:g}" if sheet else ""
    )
    for package, name in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("lm_eval", "lm-eval"),
        ("vllm", "vllm"),
    ):
        try:
            env[name] = timing.version_of(package)
        except Exception:
            env[name] = "not installed: its rows are absent"
    env["python"] = platform.python_version()
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_report(plan: Plan, tables: dict, env: dict, command: str, total_s: float) -> str:
    from evalkit.report.render import markdown_table

    preset = plan.preset
    lines = [
        f"# evalkit bench suite: preset {preset.name}",
        "",
        "```",
        command,
        "```",
        "",
        f"Finished in {total_s / 60:.1f} min; the preset is sized for {preset.budget_s / 60:.0f} min on "
        f"{preset.sized_for}.",
        "Every timing is the median of the bench's rounds, evalkit and its peers taking turns in each round; "
        "ratios divide those recorded rates.",
        "",
        "## Environment",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += ["", "## Grid", "", "| bench | model | lengths | settings | wall s |", "|---|---|---|---|---|"]
    for job in plan.jobs:
        settings = ", ".join(f"{k}={_describe(v)}" for k, v in job.kwargs.items() if k != "lengths")
        wall = f"{job.seconds:.0f}" if job.seconds is not None else "–"
        lines.append(f"| {job.bench.name} | {job.model.label} | {job.kwargs['lengths']} | {settings} | {wall} |")
    for entry in {job.bench.name: job.bench for job in plan.jobs}.values():
        table = tables.get(entry.name)
        if table is None:
            continue
        lines += [
            "",
            f"## {entry.name}",
            "",
            markdown_table(entry.summary(table) if entry.summary else table, limit=200),
            "",
            f"All columns: `bench_{entry.name}.csv`.",
        ]
    return "\n".join(lines) + "\n"


def _describe(value) -> str:
    if isinstance(value, list):
        return "+".join(getattr(v, "label", None) or getattr(v, "name", str(v)) for v in value)
    return str(value)


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", f"{did_you_mean(name, PRESETS)}use one of {', '.join(PRESETS)}")
    return PRESETS[name]
