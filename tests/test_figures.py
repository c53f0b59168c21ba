"""Uncertainty in summary.csv and in every figure, and ``evalkit plot`` telling the truth:
numbers checked against scipy and against statistics computed by hand on the rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, ttest_1samp
from typer.testing import CliRunner

import cli
from evalkit.core.errors import ConfigError
from evalkit.core.task import TaskContext
from evalkit.report import draw, stats
from evalkit.run.evaluate import RunConfig, execute

runner = CliRunner()
APP = cli.register_tasks()
CONTEXT = TaskContext(None, None, True, 0, 1024)


def t_interval(values):
    ci = ttest_1samp(values, 0).confidence_interval(0.95)
    return ci.low, ci.high


# -- summary.csv ---------------------------------------------------------------------------------


def needle_rows(correct, lengths=(512, 1024, 2048), depths=(0, 50, 100), trials=6, seed=0):
    """greedy_correct and answer_logprob rows; correct[length] is the chance of a hit."""
    rng = np.random.default_rng(seed)
    rows = []
    for attention in ("softmax", "ssmax"):
        for length in lengths:
            for depth in depths:
                for trial in range(trials):
                    base = {
                        "attention": attention,
                        "context_length": length,
                        "depth": depth,
                        "trial": trial,
                        "needle": "passkey",
                    }
                    rows.append({**base, "metric": "greedy_correct", "value": float(rng.random() < correct[length])})
                    rows.append({**base, "metric": "answer_logprob", "value": float(rng.normal(-2, 1))})
                    rows.append({**base, "metric": "answer_rank", "value": 1.0})
    return pd.DataFrame(rows)


def needle_task(**options):
    from tasks.needle import NeedleOptions, NeedleTask

    return NeedleTask(NeedleOptions(lengths="512,1k,2k", depths="0,50,100", trials=6, **options), CONTEXT)


def test_needle_summary_intervals_are_the_stats_on_the_rows():
    frame = needle_rows({512: 0.95, 1024: 0.7, 2048: 0.2})
    summary = needle_task().summarize(frame)
    for column in [
        "n",
        "units",
        "accuracy",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "answer_logprob",
        "answer_logprob_ci_low",
        "answer_logprob_ci_high",
        "effective_length",
        "effective_length_ci_low",
        "effective_length_ci_high",
        "threshold",
    ]:
        assert column in summary
    assert (summary.accuracy_ci_low <= summary.accuracy).all() and (summary.accuracy <= summary.accuracy_ci_high).all()
    for row in summary.itertuples():
        part = frame[frame.attention == row.attention]
        if row.context_length != "all":
            part = part[part.context_length == row.context_length]
        acc, lp = part[part.metric == "greedy_correct"], part[part.metric == "answer_logprob"]
        # --draw trial: a trial's depths and lengths share needle and haystack, so the trial is the unit
        want = stats.proportion(acc.value, acc.trial)
        assert (row.n, row.units) == (len(acc), 6)
        assert (row.accuracy, row.accuracy_ci_low, row.accuracy_ci_high) == pytest.approx(
            (want.value, want.ci_low, want.ci_high)
        )
        by_trial = lp.groupby("trial").value.mean()  # equal cluster sizes: the t interval of the trial means
        assert (row.answer_logprob_ci_low, row.answer_logprob_ci_high) == pytest.approx(t_interval(by_trial))


def test_needle_summary_without_clustering_is_scipys_wilson():
    frame = needle_rows({512: 0.9, 1024: 0.5, 2048: 0.1}, depths=(50,), trials=30)
    summary = needle_task(draw="sample").summarize(frame)
    for row in summary[summary.context_length != "all"].itertuples():
        hits = frame[
            (frame.attention == row.attention)
            & (frame.context_length == row.context_length)
            & (frame.metric == "greedy_correct")
        ]
        ci = binomtest(int(hits.value.sum()), len(hits)).proportion_ci(0.95, method="wilson")
        assert (row.accuracy_ci_low, row.accuracy_ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert row.n == row.units == 30


def test_effective_length_and_its_threshold():
    frame = needle_rows({512: 1.0, 1024: 1.0, 2048: 0.0})
    summary = needle_task().summarize(frame)
    pooled = summary[summary.context_length == "all"]
    assert list(pooled.effective_length) == [1024, 1024] and (pooled.threshold == stats.RULER_THRESHOLD).all()
    assert summary[summary.context_length != "all"].effective_length.isna().all()  # one number per variant
    # rel:F: F x the variant's accuracy at its shortest length
    frame = needle_rows({512: 0.5, 1024: 0.5, 2048: 0.0}, trials=20)
    summary = needle_task(threshold="rel:0.5").summarize(frame)
    for row in summary[summary.context_length == "all"].itertuples():
        shortest = summary[(summary.attention == row.attention) & (summary.context_length == 512)].accuracy.iloc[0]
        assert row.threshold == pytest.approx(0.5 * shortest)
        per = summary[(summary.attention == row.attention) & (summary.context_length != "all")]
        lengths = per.context_length.astype(int)
        assert row.effective_length == stats.effective_length(lengths, per.accuracy, row.threshold)
        assert (row.effective_length_ci_low, row.effective_length_ci_high) == stats.effective_length_interval(
            lengths, per.accuracy_ci_low, per.accuracy_ci_high, row.threshold
        )
    for bad in ("1.5", "rel:0", "ninety", "rel:x"):
        with pytest.raises(ConfigError, match="--threshold"):
            needle_task(threshold=bad)


def test_threshold_is_not_part_of_the_resume_identity():
    a = RunConfig("needle", "m", task_options={"threshold": "0.5"}).identity()
    b = RunConfig("needle", "m", task_options={"threshold": "rel:0.9"}).identity()
    assert a == b and RunConfig("needle", "m", task_options={"needle": "kv"}).identity() != a


def test_focus_summary_averages_heads_then_trials():
    from tasks.focus import FocusOptions, FocusTask

    rng = np.random.default_rng(4)
    rows = [
        {
            "attention": "softmax",
            "context_length": 512,
            "depth": d,
            "trial": t,
            "layer": l,
            "head": h,
            "metric": m,
            "value": float(rng.random()),
        }
        for d in (0, 50, 100)
        for t in range(5)
        for l in (0, 1)
        for h in range(4)
        for m in ("needle_mass", "entropy", "entropy_norm", "top1_in_needle")
    ]
    frame = pd.DataFrame(rows)
    summary = FocusTask(FocusOptions(lengths="512", depths="0,50,100", trials=5), CONTEXT).summarize(frame)
    row = summary.iloc[0]
    assert (row.n, row.units) == (15, 5)
    for metric in ("needle_mass", "entropy_norm", "top1_in_needle"):
        per_trial = frame[frame.metric == metric].groupby("trial").value.mean()  # equal sizes: heads then depths
        assert row[metric] == pytest.approx(per_trial.mean())
        assert (row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) == pytest.approx(t_interval(per_trial))


# -- figures -------------------------------------------------------------------------------------


def perplexity_run(checkpoint, out, seed=1234, attention=({"name": "softmax"},)):
    config = RunConfig(
        "perplexity",
        str(checkpoint),
        task_options={"lengths": "64,128", "samples": 4},
        attention=attention,
        out=str(out),
        device="cpu",
        seed=seed,
        quiet=True,
    )
    return execute(config).folder


def plot(*args):
    result = runner.invoke(APP, ["plot", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_plot_csv_is_summary_csv_and_one_line_per_run(tiny_checkpoint, tmp_path):
    a = perplexity_run(tiny_checkpoint, tmp_path / "a")
    b = perplexity_run(tiny_checkpoint, tmp_path / "b", seed=5)
    plot(a, b, "--out", tmp_path / "fig")
    points = pd.read_csv(tmp_path / "fig" / "perplexity_perplexity_vs_length.csv")
    assert points.series.nunique() == 2  # two runs of one model: two lines, never merged
    assert set(points.series) == {f"{points.model.iloc[0]} (a) · softmax", f"{points.model.iloc[0]} (b) · softmax"}
    for folder, series in points.groupby("runs"):
        summary = pd.read_csv(f"{folder}/summary.csv")
        got = series.set_index("context_length")[["value", "ci_low", "ci_high", "n"]]
        want = summary.set_index("context_length")[["perplexity", "perplexity_ci_low", "perplexity_ci_high", "n"]]
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12)
        # and both are exp of the t interval of the windows' mean NLL, not a mean of per-window perplexities
        rows = pd.read_parquet(f"{folder}/results.parquet")
        for length, part in rows[rows.metric == "mean_nll"].groupby("context_length"):
            low, high = t_interval(part.value)
            assert got.loc[length].to_numpy()[:3] == pytest.approx(
                [math.exp(part.value.mean()), math.exp(low), math.exp(high)]
            )
            assert (
                got.loc[length, "value"]
                < rows[(rows.metric == "perplexity") & (rows.context_length == length)].value.mean()
            )
    assert (tmp_path / "fig" / "perplexity_perplexity_vs_length.png").stat().st_size > 10_000


def synthetic_perplexity_run(folder, seed, nll_by_length, windows=4):
    """A run folder as evalkit writes it: rows, manifest; the windows' NLLs drawn around nll_by_length."""
    rng = np.random.default_rng(seed)
    rows = []
    for length, centre in nll_by_length.items():
        for sample in range(windows):
            nll = centre + rng.normal(0, 0.1)
            base = {
                "run_id": folder.name,
                "task": "perplexity",
                "model": "tiny",
                "attention": "softmax",
                "context_length": length,
                "sample": sample,
                "seed": seed,
            }
            rows += [
                {**base, "position_bin": None, "metric": "mean_nll", "value": nll, "position_end": None},
                {**base, "position_bin": None, "metric": "perplexity", "value": math.exp(nll), "position_end": None},
            ]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "results.parquet")
    config = {"task": "perplexity", "model": "ckpt/tiny", "seed": seed, "out": str(folder), "dtype": "auto"}
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "config": config,
                "seed": seed,
                "task_options": {"lengths": "64,128", "samples": windows},
                "model": {"max_position_embeddings": 96, "content_hash": "sha256:x"},
                "interrupted": False,
            }
        )
    )
    return folder


def test_aggregate_seeds_is_one_line_with_the_spread_across_seeds(tmp_path):
    seeds = [1, 2, 3]
    runs = [synthetic_perplexity_run(tmp_path / f"s{s}", s, {64: 3.0 + 0.2 * s, 128: 3.5}) for s in seeds]
    plot(*runs, "--out", tmp_path / "each", "--label", "a", "--label", "b", "--label", "c")
    each = pd.read_csv(tmp_path / "each" / "perplexity_perplexity_vs_length.csv")
    assert list(each.series.unique()) == ["a · softmax", "b · softmax", "c · softmax"]  # no silent averaging
    result = runner.invoke(APP, ["plot", *map(str, runs), "--out", str(tmp_path / "x"), "--label", "one"])
    assert result.exit_code == 2 and "--label" in result.output
    plot(*runs, "--out", tmp_path / "agg", "--aggregate", "seeds")
    points = pd.read_csv(tmp_path / "agg" / "perplexity_perplexity_vs_length.csv")
    assert points.series.nunique() == 1 and (points.n == 3).all() and (points.seeds == "1 2 3").all()
    for row in points.itertuples():
        per_seed = [
            pd.read_parquet(r / "results.parquet")
            .query(f"metric == 'mean_nll' and context_length == {row.context_length}")
            .value.mean()
            for r in runs
        ]
        low, high = t_interval(per_seed)
        assert (row.value, row.ci_low, row.ci_high) == pytest.approx(
            (math.exp(np.mean(per_seed)), math.exp(low), math.exp(high))
        )
    # the same seed twice is a repeat, not a seed: refused, not averaged
    twin = synthetic_perplexity_run(tmp_path / "twin", 1, {64: 3.2, 128: 3.5})
    result = runner.invoke(
        APP, ["plot", str(runs[0]), str(twin), "--out", str(tmp_path / "bad"), "--aggregate", "seeds"]
    )
    assert result.exit_code == 2 and "same settings and seed" in result.output
    plot(*runs, "--out", tmp_path / "agg", "--aggregate", "seeds", "--label", "mine", "--label", "x", "--label", "y")
    assert set(pd.read_csv(tmp_path / "agg" / "perplexity_perplexity_vs_length.csv").series) == {
        "mine (3 seeds) · softmax"
    }


def test_training_length_is_marked_in_every_length_plot(tmp_path, monkeypatch):
    import matplotlib.axes

    marked = []
    original = matplotlib.axes.Axes.axvline
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axvline", lambda self, x=0, *a, **k: marked.append(x) or original(self, x, *a, **k)
    )
    run = synthetic_perplexity_run(tmp_path / "r", 1, {64: 3.0, 128: 3.5})
    plot(run, "--out", tmp_path / "fig")
    assert marked == [96]  # the model's position limit, between the two lengths


def test_heatmap_is_colour_blind_safe_with_readable_text(tmp_path, monkeypatch):
    import matplotlib.axes

    from tasks.needle_plots import heatmaps

    seen = {"cmaps": [], "text": []}
    imshow, text = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.text
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "imshow",
        lambda self, X, cmap=None, **k: seen["cmaps"].append(cmap.name) or imshow(self, X, cmap=cmap, **k),
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes, "text", lambda self, x, y, s, **k: seen["text"].append((s, k)) or text(self, x, y, s, **k)
    )
    frame = needle_rows({512: 1.0, 1024: 0.5, 2048: 0.0})
    acc = frame[frame.metric == "greedy_correct"]
    heatmaps(acc, "t", 1024, tmp_path / "h.png")
    assert seen["cmaps"] == ["cividis", "cividis"]
    cells = [(s, k) for s, k in seen["text"] if k.get("ha") == "center"]
    assert len(cells) == 2 * 3 * 3 and all(k["fontsize"] >= 8 for _, k in cells)
    # contrast-aware: white on the dark end of the map, black on the light end
    colours = {s: k["color"] for s, k in cells}
    assert colours["0.00"] == "white" and colours["1.00"] == "black"


def test_one_colour_per_variant_everywhere():
    assert draw.variant_colour("softmax") == draw.VARIANT_COLOURS["softmax"] != draw.variant_colour("ssmax")
    assert draw.variant_colour("my-variant") == draw.variant_colour("my-variant")  # stable across figures


def test_a_logn_train_length_is_not_the_models_training_length(tiny_checkpoint):
    from evalkit.backends.transformers import TransformersBackend
    from evalkit.models.loading import LoadOptions
    from evalkit.run.attention_flags import VariantRequest, resolve_variants

    backend = TransformersBackend.load(str(tiny_checkpoint), LoadOptions(device="cpu"), log=lambda *a: None)
    loaded = backend.loaded
    (variant,) = resolve_variants(backend, [VariantRequest.from_dict({"name": "logn", "train_length": 64})])
    backend.activate(variant)
    # the evaluation setting is recorded on the variant; the checkpoint states no training length
    assert variant.describe["train_length"] == 64 and loaded.training_length is None
    assert loaded.describe()["training_length"] is None
