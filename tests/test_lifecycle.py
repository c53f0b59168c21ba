"""The run lifecycle from the user's side: text printed as text, the continue command run as
printed, validation before any write or load, resume identity, the folder lock, progress."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from evalkit.core.errors import ConfigError, ResultsError
from evalkit.run.evaluate import model_folders
from evalkit.store.results import RunStore
from tests.conftest import make_llama

runner = CliRunner()
APP = cli.register_tasks()


def invoke(*args):
    return runner.invoke(APP, [str(a) for a in args])


def needle_args(model, *extra):
    return [
        "run",
        "needle",
        "--model",
        str(model),
        "--lengths",
        "128",
        "--depths",
        "0:100:50",
        "--trials",
        "1",
        "--device",
        "cpu",
        "--quiet",
        *map(str, extra),
    ]


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def journal_entries(folder):
    return [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]


@pytest.fixture()
def interrupt_after(monkeypatch):
    """Ctrl-C once, after the n-th finished sample of the process (counted across runs)."""
    from evalkit.store.results import RunStore as Store

    original, state = Store.append, {"n": 0, "at": None}

    def append(self, *args, **kwargs):
        original(self, *args, **kwargs)
        state["n"] += 1
        if state["n"] == state["at"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(Store, "append", append)

    def arm(n):
        state["n"], state["at"] = 0, n

    return arm


def continue_words(result) -> list[str]:
    """The printed continue command, split as a shell would split it, without the program name."""
    assert result.exit_code == 130, result.output
    line = result.output.split("continue with:", 1)[1].strip().splitlines()[0]
    words = shlex.split(line)
    assert words[0] == "evalkit" and "--resume" in words
    return words[1:]


# -- 1. text is printed as text ----------------------------------------------------------------


def test_option_values_print_literally_not_as_emoji(tiny_checkpoint, tmp_path):
    line = one_line_error(
        invoke(*needle_args(tiny_checkpoint, "--out", tmp_path / "o", "--depths", "0:100:0")),
        "bad percentage list '0:100:0'",
    )
    assert "\U0001f4af" not in line  # rich's :100: emoji


def test_help_shows_toml_tables():
    assert "[[gate]]" in invoke("gate", "--help").output
    assert "[[model]], [[attention]], [[task]]" in " ".join(invoke("sweep", "--help").output.split())


# -- 1. the continue command, run as printed -------------------------------------------------


def test_continue_command_one_model(tiny_checkpoint, tmp_path, interrupt_after):
    out = tmp_path / "run"
    interrupt_after(2)
    words = continue_words(invoke(*needle_args(tiny_checkpoint, "--out", out, "--depths", "0:100:25")))
    assert words[words.index("--depths") + 1] == "0:100:25"
    assert len(journal_entries(out)) == 2
    result = invoke(*words)
    assert result.exit_code == 0, result.output
    assert sorted(e["sample_id"] for e in journal_entries(out)) == sorted(f"L128-d{d}-t0" for d in (0, 25, 50, 75, 100))


def test_continue_command_default_out(tiny_checkpoint, tmp_path, interrupt_after, monkeypatch):
    monkeypatch.chdir(tmp_path)
    interrupt_after(1)
    words = continue_words(invoke(*needle_args(tiny_checkpoint)))
    out = tmp_path / words[words.index("--out") + 1]
    assert out.parent == tmp_path / "results"
    assert invoke(*words).exit_code == 0
    assert len(journal_entries(out)) == 3 and len(list((tmp_path / "results").iterdir())) == 1


@pytest.mark.parametrize("with_out", [False, True])
def test_continue_command_several_models(tokenizer, tmp_path, interrupt_after, monkeypatch, with_out):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):  # two checkpoints whose folders share the basename
        make_llama(len(tokenizer), seed=ord(name)).save_pretrained(tmp_path / name / "ckpt")
        tokenizer.save_pretrained(tmp_path / name / "ckpt")
    models = ["--model", "a/ckpt", "--model", "b/ckpt"]
    out = ["--out", "study"] if with_out else []
    interrupt_after(4)  # the first sample of the second model
    first = invoke("run", "needle", *models, *needle_args("x")[4:], *out)
    words = continue_words(first)
    parent = tmp_path / words[words.index("--out") + 1]
    assert f"one run folder each under {parent.relative_to(tmp_path)}" in first.output
    assert invoke(*words).exit_code == 0
    assert sorted(p.name for p in parent.iterdir()) == ["a-ckpt", "b-ckpt"]
    for name in ("a-ckpt", "b-ckpt"):
        assert len(journal_entries(parent / name)) == 3
    assert json.loads((parent / "b-ckpt" / "manifest.json").read_text())["config"]["model"] == "b/ckpt"
    assert len([p for p in tmp_path.rglob("manifest.json")]) == 2  # nothing recomputed into new folders


def test_continue_command_sweep(tiny_checkpoint, tmp_path, interrupt_after, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(
        f'out = "runs"\ndevice = "cpu"\n[[model]]\npath = "{tiny_checkpoint}"\nname = "m"\n'
        '[[task]]\nname = "needle"\nlengths = "128"\ndepths = "0:100:50"\ntrials = 1\n'
        '[[task]]\nname = "perplexity"\nlengths = "64"\nsamples = 2\n'
    )
    interrupt_after(4)
    words = continue_words(invoke("sweep", "--config", "study.toml", "--quiet"))
    assert words == ["sweep", "--config", "study.toml", "--quiet", "--resume"]
    assert invoke(*words).exit_code == 0
    assert (
        len(journal_entries(tmp_path / "runs/m/needle")) == 3
        and len(journal_entries(tmp_path / "runs/m/perplexity")) == 2
    )


def test_model_folder_names_are_unique():
    assert model_folders(["a/ckpt", "b/ckpt/"]) == ["a-ckpt", "b-ckpt"]
    assert model_folders(["x/ckpt", "smollm2-135m"]) == ["ckpt", "smollm2-135m"]
    assert model_folders(["r/a/ckpt", "s/a/ckpt"]) == ["r-a-ckpt", "s-a-ckpt"]
    with pytest.raises(ConfigError, match="given twice"):
        model_folders(["m", "m"])


# -- 2. validate, then touch disk, then load ---------------------------------------------------


@pytest.fixture()
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("evalkit.run.evaluate.load_for", refuse)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--lengths", "12q"], "bad context length"),
        (["--depths", "0:200:50"], "must lie in 0..100"),
        (["--trials", "0"], "bad --trials 0"),
        (["--samples-file", "missing.jsonl"], "does not exist"),
    ],
)
def test_grid_and_files_checked_before_load_and_before_any_write(tiny_checkpoint, tmp_path, no_load, extra, words):
    out = tmp_path / "o"
    one_line_error(invoke(*needle_args(tiny_checkpoint, "--out", out), *extra), words)
    assert not out.exists()


def test_datasets_checked_or_refused_before_load(tiny_checkpoint, tmp_path, no_load):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    out = tmp_path / "o"
    one_line_error(invoke(*needle_args(tiny_checkpoint, "--out", out, "--dataset", empty)), "holds no text")
    one_line_error(
        invoke(*needle_args(tiny_checkpoint, "--out", out, "--dataset", empty, "--needle", "abcdigits")),
        "--dataset is not read with --needle abcdigits",
    )
    one_line_error(
        invoke(*needle_args(tiny_checkpoint, "--out", out, "--dataset", empty, "--haystack", "noise")),
        "--dataset is not read with --haystack noise",
    )
    (tmp_path / "s.jsonl").write_text("\n")
    one_line_error(
        invoke(*needle_args(tiny_checkpoint, "--out", out, "--samples-file", tmp_path / "s.jsonl")), "is empty"
    )
    assert not out.exists()


def test_out_that_is_a_file_is_one_line(tiny_checkpoint, tmp_path, no_load):
    (tmp_path / "f").write_text("x")
    one_line_error(invoke(*needle_args(tiny_checkpoint, "--out", tmp_path / "f")), "is a file")
    one_line_error(invoke(*needle_args(tiny_checkpoint, "--out", tmp_path / "f" / "run")), "is a file")


def test_failed_start_leaves_nothing_and_the_retry_runs(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    # the length check needs the model (position limit 512): it fails after the load, before any write
    one_line_error(invoke(*needle_args(tiny_checkpoint, "--out", out, "--lengths", "1k")), "exceeds")
    assert not out.exists()
    (out / "plots").mkdir(parents=True)  # what a failed start of earlier releases left behind
    result = invoke(*needle_args(tiny_checkpoint, "--out", out))
    assert result.exit_code == 0, result.output
    assert len(journal_entries(out)) == 3


# -- 3. resume identity and the lock ------------------------------------------------------------


def test_resume_with_another_grid_names_the_options(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    assert invoke(*needle_args(tiny_checkpoint, "--out", out)).exit_code == 0
    line = one_line_error(
        invoke(*needle_args(tiny_checkpoint, "--out", out, "--resume", "--lengths", "128,256", "--trials", "2")),
        "holds a different run",
    )
    assert "lengths: '128' -> '128,256'" in line and "trials: '1' -> '2'" in line
    one_line_error(
        invoke(*needle_args(tiny_checkpoint, "--out", out, "--resume", "--needle", "kv")), "needle: 'passkey' -> 'kv'"
    )
    one_line_error(
        invoke(
            *needle_args(tiny_checkpoint, "--out", out, "--resume", "--attention", "softmax,ssmax", "--ssmax-s", "0.5")
        ),
        "attention auto: {'name': 'auto'} -> not given",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["lengths"] == "128" and manifest["rows"] == 3 * 4  # untouched by the refused resumes


def test_resume_may_add_a_variant(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    assert invoke(*needle_args(tiny_checkpoint, "--out", out, "--attention", "softmax")).exit_code == 0
    before = pd.read_parquet(out / "results.parquet")
    result = invoke(*needle_args(tiny_checkpoint, "--out", out, "--attention", "softmax,logn", "--resume"))
    assert result.exit_code == 0, result.output
    after = pd.read_parquet(out / "results.parquet")
    assert sorted(e["attention"] for e in journal_entries(out)) == ["logn"] * 3 + ["softmax"] * 3
    keys = ["attention", "depth", "metric"]
    pd.testing.assert_frame_equal(
        after[after.attention == "softmax"].sort_values(keys)[keys + ["value"]].reset_index(drop=True),
        before.sort_values(keys)[keys + ["value"]].reset_index(drop=True),
    )
    one_line_error(invoke(*needle_args(tiny_checkpoint, "--out", out, "--attention", "logn", "--resume")), "attention")


def test_a_tokenizer_change_is_refused_on_resume(tiny_checkpoint, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    out = tmp_path / "o"
    assert invoke(*needle_args(ckpt, "--out", out)).exit_code == 0
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}"
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    one_line_error(invoke(*needle_args(ckpt, "--out", out, "--resume")), "tokenizer", "changed")


HOLD_LOCK = """
import sys, time
from evalkit.store.results import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_on_the_same_out_is_refused_and_a_crash_frees_it(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    assert invoke(*needle_args(tiny_checkpoint, "--out", out, "--trials", "1")).exit_code == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line_error(
            invoke(*needle_args(tiny_checkpoint, "--out", out, "--resume")), "in use by a running evalkit process"
        )
        assert f"pid {holder.pid}" in line
        with pytest.raises(ResultsError, match="in use"):
            RunStore(out, {}, resume=True)
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays behind
        holder.wait()
    assert (out / ".evalkit.lock").exists()
    result = invoke(*needle_args(tiny_checkpoint, "--out", out, "--resume"))
    assert result.exit_code == 0, result.output


def test_two_stores_in_one_folder_exclude_each_other(tmp_path):
    first = RunStore(tmp_path / "run", {"task": "t"}, resume=False)
    with pytest.raises(ResultsError, match="in use"):
        RunStore(tmp_path / "run", {"task": "t"}, resume=False)
    first.close()
    RunStore(tmp_path / "run", {"task": "t"}, resume=False).close()


# -- 7. library warnings ----------------------------------------------------------------------


def test_library_warnings_are_held_and_printed_once(tmp_path):
    import logging

    from rich.console import Console

    from evalkit.run.progress import quiet_library_warnings

    stream = io.StringIO()
    console = Console(file=stream, width=200)
    library = logging.getLogger("transformers")
    level = library.level
    library.setLevel(logging.WARNING)  # loading a model sets it to ERROR
    with quiet_library_warnings(console):
        for _ in range(3):
            warnings.warn("`past_key_values` is deprecated", FutureWarning)
        logging.getLogger("transformers.generation").warning("a library log line")
        assert stream.getvalue() == ""  # nothing while the bar is drawn
    library.setLevel(level)
    text = stream.getvalue()
    assert "warning during the run: FutureWarning: `past_key_values` is deprecated" in text
    assert "transformers.generation: a library log line" in text and text.count("\n") == 2


# -- 8. progress a person can trust --------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_from_cost_is_exact_when_time_follows_cost_and_sample_counts_are_not():
    from rich.console import Console

    from evalkit.run.progress import ProgressReporter
    from evalkit.run.runner import span_cost

    scale = 6144.0
    lengths = [8192] * 4 + [512] * 16  # longest first, as the runner orders buckets
    costs = [span_cost(0, n, scale) for n in lengths]
    clock = FakeClock()
    progress = ProgressReporter(Console(file=io.StringIO()), quiet=True, clock=clock)
    progress.start(len(lengths), sum(costs))
    seconds_per_cost = 0.002
    for k in range(4):
        clock.now += costs[k] * seconds_per_cost
        progress.advance(1, lengths[k], costs[k] * seconds_per_cost, "softmax", costs[k])
    truth = sum(costs[4:]) * seconds_per_cost
    assert progress.eta_seconds() == pytest.approx(truth, rel=1e-12)
    by_samples = clock.now / 4 * 16
    assert by_samples > 9 * truth  # what counting samples said


def test_attention_scale_of_smollm2_shape():
    from types import SimpleNamespace

    from transformers import LlamaConfig

    from evalkit.backends.transformers import TransformersBackend

    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, head_dim=64
    )
    # per layer: q, o 576 x 576; k, v 576 x 192; MLP 3 x 576 x 1536 -> 3,538,944 parameters over 576 attention dims
    assert TransformersBackend.attention_scale(SimpleNamespace(model=SimpleNamespace(config=config))) == 6144


def test_shared_run_costs_count_each_prefix_once():
    import numpy as np

    from evalkit.core.requests import AnswerScoreRequest
    from evalkit.core.task import Sample
    from evalkit.models.prefix import tokens_to_compute
    from evalkit.run.runner import shared_costs

    rng = np.random.default_rng(0)
    trunk = rng.integers(0, 50, 300)
    requests = [
        AnswerScoreRequest(np.concatenate([trunk[:cut], rng.integers(0, 50, 40)]), rng.integers(0, 50, 3))
        for cut in (100, 180, 250)
    ]
    run = [Sample(str(k), r, {}) for k, r in enumerate(requests)]
    sequences = [np.concatenate([r.prompt, r.answer]) for r in requests]
    assert sum(shared_costs(run, float("inf"))) == tokens_to_compute(sequences)[0]


def test_heartbeat_lines_in_a_log(tmp_path):
    from rich.console import Console

    from evalkit.run.progress import ProgressReporter

    stream = io.StringIO()
    clock = FakeClock()
    progress = ProgressReporter(Console(file=stream, width=300, force_terminal=False), clock=clock)
    progress.start(100, 100 * 1000)
    for _k in range(100):
        clock.now += 2.0  # 200 s in all: a line every 30 s, or at each tenth of the work, not more often than 5 s
        progress.advance(1, 1000, 2.0, "softmax L=1000")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and all(line.startswith("progress: ") for line in lines)
    assert (
        lines[0] == "progress: 10/100 samples (10% of the work), 500 tok/s, elapsed 0m20s, eta 3m00s [softmax L=1000]"
    )
    assert lines[-1].startswith("progress: 100/100 samples (100% of the work)")
    quiet = io.StringIO()
    progress = ProgressReporter(Console(file=quiet, force_terminal=False), quiet=True, clock=clock)
    progress.start(10, 10)
    progress.advance(10, 10, 1.0, "x")
    assert quiet.getvalue() == ""


def test_sweep_checks_every_cell_before_the_first_load(tiny_checkpoint, tmp_path, no_load):
    (tmp_path / "study.toml").write_text(
        f'out = "{tmp_path / "runs"}"\ndevice = "cpu"\n[[model]]\npath = "{tiny_checkpoint}"\n'
        '[[task]]\nname = "perplexity"\nlengths = "64"\n'
        '[[task]]\nname = "needle"\nlengths = "128"\ndepths = "0:100:0"\n'
    )
    one_line_error(invoke("sweep", "--config", tmp_path / "study.toml", "--quiet"), "bad percentage list '0:100:0'")
    assert not (tmp_path / "runs").exists()
