"""``evalkit bench suite``: a tiny preset end to end, the GPU preset's plan checked on the CPU (no timing
assertions)."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from evalkit.bench import suite as bench_suite
from evalkit.bench.suite import PRESETS, Preset, SuiteBench, SuiteModel, plan_suite, run_suite

runner = CliRunner()
APP = cli.register_tasks()


TINY_ARGS = {
    "perplexity": dict(seconds=0.05, batch_tokens=256, attention="ssmax-pair"),
    "needle": dict(depths="50", trials=1, batch_tokens=None),
    "focus": dict(seconds=0.05),
    "nested": dict(samples=1, rounds=1),
}


@pytest.fixture(scope="module")
def suite_run(tiny_checkpoint, tmp_path_factory):
    """The CLI on a tiny preset: the smoke preset's shape with the shortest timings, on the tiny model."""
    out = tmp_path_factory.mktemp("suite")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(
            PRESETS, "tiny", Preset("tiny", "cpu", "float32", 30, PRESETS["smoke"].models, "a test", probe_size=256)
        )
        for entry in bench_suite.REGISTRY:
            if (
                entry.name in TINY_ARGS
            ):  # the queries bench needs a 26-key haystack, longer than 128 tokens: its own test covers it
                patch.setitem(entry.args, "tiny", TINY_ARGS[entry.name])
        result = runner.invoke(
            APP,
            [
                "bench",
                "suite",
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--model",
                str(tiny_checkpoint),
                "--lengths",
                "128",
            ],
        )
    assert result.exit_code == 0, result.output
    return out


def test_suite_writes_a_report_and_one_csv_per_bench(suite_run, tiny_checkpoint):
    assert sorted(p.name for p in suite_run.iterdir()) == [
        "bench_focus.csv",
        "bench_needle.csv",
        "bench_nested.csv",
        "bench_perplexity.csv",
        "report.md",
    ]
    report = (suite_run / "report.md").read_text()
    for heading in ("## Environment", "## Grid", "## perplexity", "## needle", "## focus"):
        assert heading in report
    assert f"evalkit bench suite --out {suite_run} --preset tiny --model {tiny_checkpoint} --lengths 128" in report
    for fact in (
        "- device: cpu",
        "- CPU: ",
        "- dtype: float32",
        "- torch: ",
        "- transformers: ",
        "- lm-eval: ",
        "TFLOP/s measured",
    ):
        assert fact in report
    for name in ("perplexity", "needle", "focus"):
        table = pd.read_csv(suite_run / f"bench_{name}.csv")
        assert (table.model == str(tiny_checkpoint)).all() and len(table) >= 1


def test_perplexity_ratios_come_from_the_recorded_rates(suite_run):
    rows = pd.read_csv(suite_run / "bench_perplexity.csv")
    summary = bench_suite._perplexity_summary(rows)
    ours = rows.set_index("attention").scored_tokens_per_s
    plain = next(label for label in ours.index if label.startswith("plain transformers"))
    row = summary.iloc[0]
    assert row["evalkit vs plain"] == round(ours["softmax"] / ours[plain], 3)
    assert row["ssmax vs softmax"] == round(ours["ssmax"] / ours["softmax"], 3)
    assert row["softmax MFU"] == rows.mfu.iloc[0] and row["tokens computed/scored (evalkit)"] == f"{2 * 128}/{2 * 127}"
    if importlib.util.find_spec("lm_eval"):
        peer = next(label for label in ours.index if label.startswith("lm-eval"))
        assert row["evalkit vs lm-eval"] == round(ours["softmax"] / ours[peer], 3)
    report = (suite_run / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| model | context_length | batch"))
    assert "evalkit vs plain" in header and "softmax MFU" in header and "peak TFLOP/s" in header


def test_needle_and_focus_tables(suite_run):
    needle = bench_suite._needle_summary(pd.read_csv(suite_run / "bench_needle.csv"))
    assert list(needle.context_length) == ["128", "all"]
    raw = pd.read_csv(suite_run / "bench_needle.csv")
    assert (needle.auto_vs_generate == (raw.auto_samples_per_s / raw.generate_samples_per_s).round(2)).all()
    focus = pd.read_csv(suite_run / "bench_focus.csv")
    assert list(focus.columns[:4]) == ["model", "context_length", "plain_forward_s", "probed_forward_s"]
    report = (suite_run / "report.md").read_text()
    assert (
        "| model | context_length | samples | tokens_computed_shared | auto_samples_per_s | generate_samples_per_s "
        "| auto_vs_generate" in report
    )


def test_gpu_preset_plan():
    """The grid the lead runs on an H100, planned here: models, lengths, dtype, variants, budget."""
    preset = PRESETS["gpu"]
    assert (preset.device, preset.dtype, preset.budget_s) == ("cuda", "bfloat16", 720)
    plan = plan_suite(preset)
    grid = {(job.model.shape, job.bench.name): job.kwargs["lengths"] for job in plan.jobs}
    assert grid == {
        ("llama-1b", "perplexity"): "8k,32k",
        ("llama-1b", "needle"): "8k,32k",
        ("llama-1b", "focus"): "8k,32k",
        ("smollm2-135m", "perplexity"): "2k,4k,8k,16k,32k,64k",
        ("smollm2-135m", "needle"): "2k,8k,32k",
        ("smollm2-135m", "focus"): "2k,16k,64k",
        ("llama-1b", "queries"): "8k",
        ("smollm2-135m", "queries"): "8k",
        ("llama-1b", "nested"): "1k..32k",
        ("smollm2-135m", "nested"): "1k..32k",
        ("llama-1b", "screening"): "4k,16k,32k,64k,100k",  # builds its own models: once per preset
        ("llama-1b", "backends"): "32k,64k,128k",  # vLLM on the same shape, RULER + needle generation
    }
    (vllm,) = [job for job in plan.jobs if job.bench.name == "backends"]
    assert vllm.kwargs["backends"] == ("vllm",) and vllm.kwargs["engine"]["load_format"] == "dummy"
    perplexity = [job for job in plan.jobs if job.bench.name == "perplexity"]
    for job in perplexity:
        assert [(v.name, v.options.s) for v in job.kwargs["attention"]] == [
            ("softmax", None),
            ("ssmax", bench_suite.SSMAX_S),
        ]
        assert job.kwargs["batch_tokens"] == 131072
    assert all(job.model.spec is None for job in plan.jobs)  # random weights, written on the GPU machine


def test_gpu_preset_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = runner.invoke(APP, ["bench", "suite", "--out", str(tmp_path), "--preset", "gpu"])
    assert result.exit_code == 2 and "needs a CUDA device" in result.output


def test_unknown_preset_is_a_one_line_error(tmp_path):
    result = runner.invoke(APP, ["bench", "suite", "--out", str(tmp_path), "--preset", "gpus"])
    assert result.exit_code == 2 and "did you mean 'gpu'" in result.output


def test_a_registered_bench_joins_with_one_entry_and_random_shapes_are_written_once(tiny_checkpoint, tmp_path):
    """The path the GPU preset takes (a random checkpoint of a shape), on a 1-layer SmolLM2 shape,
    with a bench registered from outside that takes only some of the suite-wide arguments."""
    calls = []

    def bench_echo(model, lengths, dtype, scale):
        calls.append((model, lengths, dtype))
        return pd.DataFrame([{"context_length": lengths, "value": scale, "device": "cpu"}])

    extra = SuiteBench("echo", bench_echo, {"tiny": dict(scale=2)})
    shape = SuiteModel("smollm2 shape, 1 layer", {"*": "32"}, shape="smollm2-135m", layers=1)
    preset = Preset("tiny", "cpu", "float32", 60, (shape, shape), sized_for="a test", probe_size=128)
    plan = plan_suite(preset, benches=[extra])
    tables = run_suite(
        plan,
        tmp_path / "out",
        "evalkit bench suite --preset tiny",
        tokenizer=str(tiny_checkpoint),
        checkpoints=tmp_path / "ckpt",
        log=lambda *a: None,
    )
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0][1:] == ("32", "float32")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["smollm2-135m-1-float32"]  # written once, reused
    assert list(tables["echo"].value) == [2, 2]
    assert (tmp_path / "out" / "bench_echo.csv").exists() and "## echo" in (tmp_path / "out" / "report.md").read_text()


def test_nested_bench_times_the_two_window_modes_end_to_end(tiny_checkpoint, tmp_path):
    """Both modes are full perplexity runs on one loaded model; nested computes the longest window only,
    both score the same tokens, and the speed-up is the ratio of the recorded times."""
    from evalkit.bench.nested import bench_nested

    frame = bench_nested(str(tiny_checkpoint), "32..128", "cpu", "float32", str(tmp_path), samples=2, rounds=1)
    rows = frame.set_index("windows")
    assert list(rows.windows_used) == ["nested", "independent"]
    assert (
        rows.loc["nested", "tokens_computed"] == 128 * 2
        and rows.loc["independent", "tokens_computed"] == (32 + 64 + 128) * 2
    )
    assert rows.tokens_scored.nunique() == 1
    ratio = rows.loc["independent", "seconds_per_run"] / rows.loc["nested", "seconds_per_run"]
    assert rows.loc["nested", "speedup_vs_independent"] == pytest.approx(ratio, rel=0.05)  # seconds are shown to the ms
    assert (tmp_path / "bench_nested.csv").exists()
