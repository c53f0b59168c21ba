"""One settings schema (evalkit.core.settings): the run CLI, the Python API, track, sweep and RunConfig
are made from it; every option it can check is refused in one line, exit 2, before torch is imported;
what needs the checkpoint is checked against its config.json before any weights load."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from evalkit.core import settings
from evalkit.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
APP = cli.register_tasks()


@pytest.fixture(autouse=True, scope="module")
def _backends():
    """evalkit's backends, registered at run time where the installed metadata predates their entry points."""
    from evalkit.core.registry import BACKENDS

    added = []
    for name, where in (
        ("transformers", "transformers:TransformersBackend"),
        ("torch", "torch_module:TorchModuleBackend"),
    ):
        if name not in BACKENDS.names():
            module, _, cls = where.partition(":")
            BACKENDS.register(name, getattr(__import__(f"evalkit.backends.{module}", fromlist=[cls]), cls))
            added.append(name)
    yield
    for name in added:
        BACKENDS.unregister(name)


def invoke(*args):
    return CliRunner().invoke(APP, [str(a) for a in args])


def one_line_error(result, *needles):
    """Exit 2 and exactly one line, naming each needle."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def config_only(tmp_path) -> Path:
    """A checkpoint folder with a config.json and no weights: anything that gets as far as loading
    weights fails on it with another message, so a refusal naming the option came before the load."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    config = {"model_type": "llama", "num_hidden_layers": 2, "max_position_embeddings": 8192}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _in_fresh_interpreter(args: list[str]) -> tuple[str, str]:
    """(exit code and whether torch / transformers were imported, the output) of the CLI in a new process."""
    code = (
        "import sys; from typer.testing import CliRunner; import cli; "
        f"r = CliRunner().invoke(cli.register_tasks(), {args!r}); "
        "print(r.exit_code, 'torch' in sys.modules, 'transformers' in sys.modules); print(r.output)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    first, _, message = done.stdout.partition("\n")
    return first, message.strip() or done.stderr


def test_an_option_error_is_reported_without_importing_torch(config_only):
    state, message = _in_fresh_interpreter(["run", "needle", "--model", "smollm2-135m", "--trials", "-1"])
    assert state == "2 False False", message
    assert message == "error: bad --trials -1: give at least 1, or auto:D (e.g. auto:0.10)"
    state, message = _in_fresh_interpreter(["run", "needle", "--attention-layers", "1,x"])
    assert state == "2 False False" and "bad --attention-layers '1,x'" in message, message
    # what the checkpoint's config.json says is checked before torch too
    state, message = _in_fresh_interpreter(["run", "focus", "--model", str(config_only), "--layers", "99"])
    assert state == "2 False False" and "has 2 layers (0..1), no layer 99" in message, message


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--trials", "-1"], ["bad --trials -1"]),
        (["--batch-tokens", "0"], ["bad --batch-tokens 0"]),
        (["--dtype", "float8"], ["bad --dtype", "bfloat16"]),
        (["--device-map", "everywhere"], ["bad --device-map", "balanced"]),
        (["--backend", "vlm"], ["unknown --backend 'vlm'", "transformers"]),
        (["--rope-factor", "4"], ["--rope-factor needs a scaling"]),
        (["--rope-scaling", "yarn"], ["needs a factor"]),
        (["--resume"], ["--resume needs --out"]),
        (["--model", "a", "--model", "a"], ["--model a is given twice"]),
        (["--lengths", "1k-2k"], ["'1k-2k'", "1k..2k"]),
        (["--lengths", "1k.."], ["'1k..' has no last length", "1k..32k"]),
        (["--lengths", "..2k"], ["no first length"]),
        (["--attention-layers", "x"], ["bad --attention-layers"]),
        (["--ssmax-n", "rows"], ["bad --ssmax-n 'rows'", "position, length"]),
    ],
)
def test_bad_run_options_are_one_line(args, needles):
    one_line_error(invoke("run", "needle", *args), *needles)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_out_must_be_a_writable_place_on_a_real_filesystem(tmp_path):
    one_line_error(invoke("run", "needle", "--out", "/proc/evalkit-out"), "cannot write --out /proc/evalkit-out")
    file = tmp_path / "file"
    file.write_text("x")
    one_line_error(invoke("run", "needle", "--out", file / "run"), "is inside", "a file")
    assert not any(p.name.startswith(".evalkit-probe-") for p in tmp_path.iterdir())  # the probe is removed


def test_focus_layers_beyond_the_checkpoint_fail_before_weights_load(config_only):
    line = one_line_error(invoke("run", "focus", "--model", config_only, "--layers", "0,99"), "--layers 0,99")
    assert "has 2 layers (0..1), no layer 99" in line
    line = one_line_error(
        invoke("run", "needle", "--model", config_only, "--attention", "ssmax", "--attention-layers", "1,5"),
        "--attention-layers 1,5",
    )
    assert "no layer 5" in line
    # within the model, the run goes on to loading, which then finds no weights: the check came first
    assert "no weight files" in invoke("run", "focus", "--model", config_only, "--layers", "1").output


def test_a_bad_second_model_is_refused_before_the_first_runs(config_only, tmp_path, monkeypatch):
    import evalkit.run.evaluate as run_evaluate

    started = []
    monkeypatch.setattr(run_evaluate, "execute", lambda config, **kw: started.append(config))
    out = tmp_path / "runs"
    one_line_error(
        invoke("run", "needle", "--model", config_only, "--model", tmp_path / "missing", "--out", out),
        "missing",
        "not found",
    )
    assert started == [] and not out.exists()


def test_a_variant_parameter_no_variant_takes_is_refused():
    one_line_error(
        invoke("run", "needle", "--attention", "softmax", "--ssmax-s", "0.43"),
        "--ssmax-s does nothing for --attention softmax",
        "ssmax",
    )
    one_line_error(invoke("run", "needle", "--attention", "ssmax", "--beta", "0.2"), "--beta does nothing")


def test_resume_of_a_folder_that_does_not_exist_says_so(config_only, tmp_path, monkeypatch):
    import evalkit.run.evaluate as run_evaluate

    def stop(config, **kw):
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(run_evaluate, "execute", stop)
    result = invoke("run", "needle", "--model", config_only, "--out", tmp_path / "new", "--resume")
    assert f"--resume: {tmp_path / 'new'} does not exist yet; starting a new run there" in result.output


def test_each_task_help_shows_what_it_accepts_in_panels():
    focus = invoke("run", "focus", "--help").output
    needle = invoke("run", "needle", "--help").output
    assert "auto:D" in needle and "auto:D" not in focus
    for panel in settings.PANELS:
        assert panel in needle
    # panels in order, the task's own options in the Task panel
    assert needle.index("Model and device") < needle.index("--device") < needle.index("Attention")
    assert needle.index("Task") < needle.index("--depths") < needle.index("Output") < needle.index("--resume")


def test_version_command_order_and_whole_summaries():
    from importlib.metadata import version

    assert invoke("--version").output.strip() == f"evalkit {version('evalkit')}"
    listing = CliRunner().invoke(APP, ["--help"], env={"COLUMNS": "200"}).output
    order = [listing.index(f" {name} ") for name in ("run", "compare", "gate", "plot", "track", "sweep", "tasks")]
    assert order == sorted(order)
    commands = listing[listing.index("Commands") :]
    assert "..." not in commands and "…" not in commands


def test_one_schema_makes_runconfig_api_track_and_sweep():
    from evalkit.api import evaluate
    from evalkit.run.evaluate import RunConfig
    from evalkit.run.sweep import _TOP_KEYS

    fields = [f.name for f in dataclasses.fields(RunConfig)]
    assert fields == ["task", "model", "task_options", "attention", "rope", "backend_options"] + [
        s.name for s in settings.config_fields()
    ]
    assert RunConfig("needle", "m").backend == "auto"
    api = inspect.signature(evaluate).parameters
    assert {"device_map", "backend", "batch_tokens", "ssmax_s", "progress"} <= set(api)
    track = invoke("track", "--help").output
    for flag in ("--device-map", "--backend", "--rope-theta", "--attention-layers", "--prefix-cache"):
        assert flag in track
    assert {"device_map", "backend", "prefix_cache", "rope_theta"} <= _TOP_KEYS
    # every RunConfig setting is reachable from the command line
    assert {s.name for s in settings.config_fields()} <= set(settings.names(settings.CLI))


def test_checks_work_on_values_from_a_toml_or_python():
    with pytest.raises(ConfigError, match="bad --batch-tokens 'many'"):
        settings.check_settings({"batch_tokens": "many"}, settings.SWEEP)
    with pytest.raises(ConfigError, match="unknown setting"):
        settings.check_settings({"ssmax_s": 0.4}, settings.SWEEP)  # a sweep names its variants in [[attention]]
    values = settings.check_settings({"rope_theta": 500000}, settings.SWEEP)
    assert values["rope_theta"] == 500000.0 and values["device"] == "auto"


def test_sweep_toml_refuses_a_bad_setting_before_any_load(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(
        'out = "%s"\ndevice_map = "everywhere"\n[[model]]\npath = "m"\n[[task]]\nname = "needle"\n' % (tmp_path / "o")
    )
    one_line_error(invoke("sweep", "--config", study), "bad --device-map 'everywhere'")


def test_track_refuses_a_bad_setting(tmp_path):
    one_line_error(invoke("track", tmp_path, "--dtype", "half"), "bad --dtype 'half'")
