"""evalkit.report.compare on small run folders written in the test.

The folders use the real runs' column layout (common columns, task keys between context_length
and metric, provenance after value) and a manifest with the fields evaluate() writes, so key
detection, completeness and pairing are exercised as in production.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.report import runs, stats
from evalkit.report.compare import Tolerance, compare_cells, compare_runs, to_json, to_junit, to_markdown, to_rich_table

BINS = (1, 2, 4, 8)
TOKENIZER = {"class": "Tok", "name_or_path": "x", "vocab_size": 100, "content_hash": "abc"}


def write_run(
    folder,
    rows: list[dict],
    keys: list[str],
    task: str,
    provenance: tuple[str, ...] = (),
    *,
    model="tiny",
    options: dict | None = None,
    seed: int = 1234,
    interrupted: bool = False,
    planned: int | None = None,
    tokenizer: dict | None = None,
):
    """A run folder as `evalkit run` writes it: results.parquet in the documented order + manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows).assign(run_id=folder.name, task=task, model=model)
    for key in keys:
        if frame[key].dtype.kind == "f":
            frame[key] = frame[key].astype("Int64")  # missing integer keys, as results.py stores them
    frame = frame[["run_id", "task", "model", "attention", "context_length", *keys, "metric", "value", *provenance]]
    frame.to_parquet(folder / "results.parquet", index=False)
    variants = sorted(frame.attention.unique())
    per_variant = len(
        frame[["context_length", *[k for k in keys if k not in runs.WITHIN_SAMPLE_KEYS]]].drop_duplicates()
    )
    manifest = {
        "run_id": folder.name,
        "seed": seed,
        "task_options": options or {},
        "attention": variants,
        "model": {"name": model, "tokenizer": tokenizer or TOKENIZER},
        "samples": planned or per_variant,
        "finished_samples": per_variant * len(variants),
        "interrupted": interrupted,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def perplexity_run(
    folder,
    shift: dict | None = None,
    attentions=("softmax", "ssmax"),
    lengths=(512, 1024),
    samples: int = 3,
    seed: int = 0,
    **kw,
):
    """mean_nll per window (+ shift[(attention, length)]), perplexity = exp(mean_nll), nll per bin."""
    rng = np.random.default_rng(seed)
    rows = []
    for attention in attentions:
        for length in lengths:
            for sample in range(samples):
                mean = 2.5 + 0.3 * rng.standard_normal() + (shift or {}).get((attention, length), 0.0)
                base = {
                    "attention": attention,
                    "context_length": length,
                    "sample": sample,
                    "source": "builtin",
                    "offset": 17 * sample,
                }
                rows += [
                    {**base, "position_bin": b, "metric": "nll", "value": mean + 1 / b, "position_end": 2 * b}
                    for b in BINS
                ]
                rows += [
                    {**base, "position_bin": None, "metric": "mean_nll", "value": mean, "position_end": None},
                    {
                        **base,
                        "position_bin": None,
                        "metric": "perplexity",
                        "value": math.exp(mean),
                        "position_end": None,
                    },
                ]
    return write_run(folder, rows, ["sample", "position_bin"], "perplexity", ("position_end", "source", "offset"), **kw)


def needle_rows(correct: dict, depths=(50,), logprob=None) -> list[dict]:
    """correct: {(attention, length): [0/1 per trial x depth]}; the answer is the trial's."""
    rows = []
    for (attention, length), values in correct.items():
        for k, ok in enumerate(values):
            trial, depth = divmod(k, len(depths))
            base = {
                "attention": attention,
                "context_length": length,
                "depth": depths[depth],
                "trial": trial,
                "needle": "passkey",
                "answer": f"{1000 + trial}",
            }
            lp = -1.0 - 0.1 * (trial % 7) if logprob is None else logprob(attention, length, k)
            rows += [
                {**base, "metric": "greedy_correct", "value": float(ok)},
                {**base, "metric": "answer_logprob", "value": lp},
            ]
    return rows


def needle_run(folder, correct, attention="softmax", length=2048, logprob_shift=0.0, **kw):
    rows = needle_rows({(attention, length): correct}, logprob=lambda a, n, k: -1.0 - 0.1 * (k % 7) + logprob_shift)
    kw.setdefault("options", {"draw": "sample", "needle": "passkey"})
    return write_run(folder, rows, ["depth", "trial", "needle"], "needle", ("answer",), **kw)


@pytest.fixture
def base(tmp_path):
    return perplexity_run(tmp_path / "base")


# -- verdicts --------------------------------------------------------------------------------------


def test_identical_runs_pass(base, tmp_path):
    c = compare_runs(base, perplexity_run(tmp_path / "same"))
    assert c.exit_code == 0 and c.regressions.empty and c.improvements.empty and not c.failed_checks
    # mean_nll per window, and perplexity as the same test through exp; per-position nll is left out
    assert set(c.rows.metric) == {"mean_nll", "perplexity"} and len(c.rows) == 2 * 2 * 2
    assert (c.rows.delta == 0).all() and not c.rows.beyond_noise.any()
    assert c.rows.paired.all() and (c.rows.pairs == 3).all() and (c.rows.units == 3).all()
    assert "paired prompt by prompt" in c.summary["pairing"]


def test_worse_candidate_is_a_regression(base, tmp_path):
    cand = perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.2})
    c = compare_runs(base, cand, tolerance=0.05)
    assert c.exit_code == 1
    assert set(zip(c.regressions.attention, c.regressions.context_length, c.regressions.metric)) == {
        ("ssmax", 1024, "mean_nll"),
        ("ssmax", 1024, "perplexity"),
    }
    row = c.regressions.set_index("metric").loc["mean_nll"]
    assert row.delta == pytest.approx(0.2) and row.direction == -1 and row.beyond_noise
    assert row.test.startswith("paired t")
    ppl = c.regressions.set_index("metric").loc["perplexity"]
    assert ppl.candidate == pytest.approx(math.exp(math.log(ppl.baseline) + 0.2))  # exp(mean NLL), as summary.csv


def test_better_candidate_is_an_improvement(base, tmp_path):
    c = compare_runs(base, perplexity_run(tmp_path / "better", shift={("softmax", 512): -0.2}))
    assert c.exit_code == 0 and c.regressions.empty
    assert set(c.improvements.metric) == {"mean_nll", "perplexity"}
    assert set(c.improvements.attention) == {"softmax"} and set(c.improvements.context_length) == {512}


def test_float_noise_is_no_regression(base, tmp_path):
    """The user's case: a float-only difference of -9.5e-09 exited 1 at the default tolerance."""
    frame = pd.read_parquet(base / "results.parquet")
    frame.loc[frame.metric == "mean_nll", "value"] += 9.5e-9  # every window, so it is "beyond noise"
    cand = tmp_path / "float"
    import shutil

    shutil.copytree(base, cand)
    frame.to_parquet(cand / "results.parquet", index=False)
    c = compare_runs(base, cand)
    assert c.rows.set_index("metric").loc["mean_nll"].beyond_noise.all()  # the noise test alone would fail it
    assert c.exit_code == 0 and c.regressions.empty
    assert compare_runs(base, perplexity_run(tmp_path / "real", shift={("ssmax", 512): 1e-3})).exit_code == 1


def test_verdict_and_noise_agree(base, tmp_path):
    """Perplexity used to exit 1 at every tolerance while the report said 'beyond noise: no'."""
    cand = perplexity_run(tmp_path / "noisy", seed=1)  # other windows' values: differences within the noise
    c = compare_runs(base, cand)
    for metric in ("mean_nll", "perplexity"):
        rows = c.rows[c.rows.metric == metric].set_index(["attention", "context_length"])
        assert not rows.beyond_noise.any()
    assert c.exit_code == 0 and not c.rows.regression.any()
    by = c.rows.set_index(["attention", "context_length", "metric"])
    for key in by.index.droplevel(2).unique():
        nll, ppl = by.loc[(*key, "mean_nll")], by.loc[(*key, "perplexity")]
        assert nll.p_value == ppl.p_value and nll.beyond_noise == ppl.beyond_noise
        assert (ppl.ci_low < 0 < ppl.ci_high) == (nll.ci_low < 0 < nll.ci_high)
    assert compare_runs(base, cand, strict=True).exit_code == 1  # --strict: any worsening beyond the tolerance


def test_within_tolerance_passes(base, tmp_path):
    cand = perplexity_run(tmp_path / "slightly", shift={("ssmax", 512): 0.01})
    assert compare_runs(base, cand).exit_code == 1  # the same shift on every window: beyond noise, above the floor
    c = compare_runs(base, cand, tolerance=0.02, metric_tolerances={"perplexity": Tolerance(absolute=0.5)})
    assert c.exit_code == 0 and c.regressions.empty and c.improvements.empty


def test_relative_tolerance(base, tmp_path):
    cand = perplexity_run(tmp_path / "rel", shift={("softmax", 1024): 0.01})  # mean_nll +~0.4%, perplexity +1%
    assert compare_runs(base, cand, tolerance=0.02, relative=True).exit_code == 0
    # one decision per quantity: the NLL tolerance (0.005 x ~2.5 = ~0.0125 > 0.01) carries to the
    # perplexity row through exp, so the perplexity row (+1%) no longer fails on its own units
    c = compare_runs(base, cand, tolerance=0.005, relative=True)
    assert c.exit_code == 0 and c.regressions.empty
    ppl = c.rows[
        (c.rows.metric == "perplexity") & (c.rows.attention == "softmax") & (c.rows.context_length == 1024)
    ].iloc[0]
    nll = c.rows[
        (c.rows.metric == "mean_nll") & (c.rows.attention == "softmax") & (c.rows.context_length == 1024)
    ].iloc[0]
    assert ppl.tolerance == pytest.approx(ppl.baseline * math.expm1(nll.tolerance), rel=1e-3)
    c = compare_runs(base, cand, tolerance=0.002, relative=True)
    assert c.exit_code == 1 and sorted(c.regressions.metric) == ["mean_nll", "perplexity"]
    assert c.regressions.set_index("metric").rel_delta["perplexity"] == pytest.approx(math.expm1(0.01), rel=1e-6)


# -- CI safety -------------------------------------------------------------------------------------


def assert_reason_everywhere(c, *words):
    markdown, data = to_markdown(c), json.loads(to_json(c))
    failures = [f.get("message") for f in ET.fromstring(to_junit(c)).iter("failure")]
    for word in words:
        assert word in markdown, markdown
        assert any(word in reason for reason in data["summary"]["failed_checks"]), data["summary"]
        assert any(word in message for message in failures), failures
    assert markdown.startswith("## ❌") and data["summary"]["exit_code"] == 1


def test_interrupted_candidate_fails(base, tmp_path):
    cand = perplexity_run(tmp_path / "cut", interrupted=True, planned=2000)
    c = compare_runs(base, cand)
    assert c.exit_code == 1 and c.regressions.empty
    assert_reason_everywhere(c, "interrupted", "of 4000 samples finished")
    manifest = json.loads((cand / "manifest.json").read_text())
    del manifest["interrupted"]  # killed before the end record: as unsafe
    (cand / "manifest.json").write_text(json.dumps(manifest))
    assert_reason_everywhere(compare_runs(base, cand), "did not finish")
    manifest.update(interrupted=False, finished_samples=84)
    (cand / "manifest.json").write_text(json.dumps(manifest))
    assert_reason_everywhere(compare_runs(base, cand), "incomplete", "84 of 4000")


def test_missing_cells_fail_unless_allowed(base, tmp_path):
    cand = perplexity_run(tmp_path / "part", attentions=("softmax", "ssmax"), lengths=(512,))
    c = compare_runs(base, cand)
    assert c.exit_code == 1 and c.regressions.empty
    assert_reason_everywhere(c, "lacks 2 cell(s)", "softmax@1024 mean_nll")
    allowed = compare_runs(base, cand, allow_missing=True)
    assert allowed.exit_code == 0 and "allowed by --allow-missing" in to_markdown(allowed)


def test_mismatched_options_and_tokenizer_fail(tmp_path):
    b = needle_run(tmp_path / "b", [1, 0] * 10)
    other_options = needle_run(tmp_path / "c", [1, 0] * 10, options={"draw": "sample", "needle": "city"})
    c = compare_runs(b, other_options)
    assert_reason_everywhere(c, "task options differ", "needle ('passkey' in b vs 'city' in c)")
    other_tok = needle_run(
        tmp_path / "t", [1, 0] * 10, tokenizer={**TOKENIZER, "content_hash": "def", "vocab_size": 120}
    )
    assert_reason_everywhere(compare_runs(b, other_tok), "tokenizers differ", "vocab_size 120")
    loose = compare_runs(
        b, other_tok, unpaired=True
    )  # asked not to pair: a note, and the numbers as independent samples
    assert loose.exit_code == 0 and "tokenizers differ" in to_markdown(loose) and not loose.rows.paired.any()


def test_prompts_that_differ_fail(tmp_path):
    b = needle_run(tmp_path / "b", [1, 0] * 10)
    c = needle_run(tmp_path / "c", [1, 0] * 10)
    frame = pd.read_parquet(c / "results.parquet")
    frame["answer"] = "other"  # same keys and options, other needles: not the same prompts
    frame.to_parquet(c / "results.parquet", index=False)
    assert_reason_everywhere(compare_runs(b, c), "prompts differ")


def test_bad_inputs(base, tmp_path):
    with pytest.raises(ConfigError, match="different tasks"):
        compare_runs(base, needle_run(tmp_path / "needle", [1, 0]))
    with pytest.raises(ResultsError, match="does not exist"):
        compare_runs(base, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no run"):
        compare_runs(tmp_path / "empty", base)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "results.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ResultsError, match="cannot be read"):
        compare_runs(base, torn)
    with pytest.raises(ConfigError, match="nothing says which rows"):
        compare_runs(base)
    with pytest.raises(ConfigError, match="did you mean 'ssmax'"):
        compare_runs(base, base_select=["attention=softmax"], cand_select=["attention=smax"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        compare_runs(base, base_select=["softmax"], cand_select=["attention=ssmax"])
    with pytest.raises(ConfigError, match="2 attention values"):
        compare_runs(base, base, base_select=["attention=softmax"], cand_select=["attention=softmax,ssmax"])
    with pytest.raises(ConfigError, match="threshold"):
        compare_runs(base, base, threshold="rel:2")
    other = perplexity_run(tmp_path / "other", attentions=("logn",), lengths=(4096,))
    with pytest.raises(ConfigError, match="logn@4096"):
        compare_runs(base, other)


def test_reports(base, tmp_path):
    cand = perplexity_run(tmp_path / "worse", shift={("ssmax", 1024): 0.2, ("softmax", 512): -0.1})
    c = compare_runs(base, cand)
    markdown = to_markdown(c)
    assert markdown.startswith("## ❌") and "2 regressions" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ❌")]
    assert len(table) == 2 and all("ssmax | 1024" in line for line in table)
    assert markdown.index("| ❌") < markdown.index("| ✅")  # regressions first
    assert "paired t" in markdown and "Pairing: paired" in markdown
    assert to_markdown(compare_runs(base, base)).startswith("## ✅")
    data = json.loads(to_json(c))
    assert data["summary"]["regressions"] == 2 and len(data["rows"]) == len(c.rows)
    assert all(isinstance(row["p_value"], float) and row["test"] for row in data["rows"])
    suite = ET.fromstring(to_junit(c)).find("testsuite")
    assert int(suite.get("failures")) == len(c.regressions) == 2
    assert int(suite.get("tests")) == len(c.rows) + len(c.checks)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(to_rich_table(c))
    text = console.export_text()
    assert "2 regressions" in text and "baseline complete" in text and "ssmax" in text


# -- pairing, selectors, McNemar -------------------------------------------------------------------


def variants_run(folder, seed=1234, **kw):
    """One run, softmax and ssmax on the same 40 prompts (draw=sample: one prompt per unit)."""
    rng = np.random.default_rng(7)
    soft = (rng.random(40) < 0.5).astype(int)
    ss = np.where(rng.random(40) < 0.3, 1 - soft, soft)  # ~30% of the prompts flip
    ss[:8] = 1  # and ssmax wins more of them
    rows = needle_rows({("softmax", 1024): soft, ("ssmax", 1024): ss})
    return (
        write_run(
            folder,
            rows,
            ["depth", "trial", "needle"],
            "needle",
            ("answer",),
            options={"draw": "sample"},
            seed=seed,
            **kw,
        ),
        soft,
        ss,
    )


def test_variants_of_one_run_paired_by_mcnemar(tmp_path):
    run, soft, ss = variants_run(tmp_path / "study")
    c = compare_runs(run, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    row = c.rows.set_index("metric").loc["greedy_correct"]
    assert row.attention == "softmax → ssmax" and row.paired and row.pairs == 40
    gained, lost = int(((soft == 0) & (ss == 1)).sum()), int(((soft == 1) & (ss == 0)).sum())
    assert row.p_value == pytest.approx(binomtest(gained, gained + lost, 0.5).pvalue, rel=1e-12)
    assert row.delta == pytest.approx(ss.mean() - soft.mean()) and row.test.startswith("exact McNemar")
    assert "McNemar" in to_markdown(c) and "40" in to_markdown(c)


def test_two_runs_each_its_own_variant(tmp_path):
    run, soft, ss = variants_run(tmp_path / "both")
    frame = pd.read_parquet(run / "results.parquet")
    for name, attention, model in (("softmax", "softmax", "ref-softmax"), ("ssmax", "ssmax", "ref-ssmax")):
        part = frame[frame.attention == attention].drop(columns=["run_id", "task", "model"])
        write_run(
            tmp_path / "ref" / name,
            part.to_dict("records"),
            ["depth", "trial", "needle"],
            "needle",
            ("answer",),
            options={"draw": "sample"},
            model=model,
        )
    c = compare_runs(
        tmp_path / "ref" / "softmax",
        tmp_path / "ref" / "ssmax",
        base_select=["attention=softmax"],
        cand_select=["attention=ssmax"],
    )
    row = c.rows.set_index("metric").loc["greedy_correct"]
    assert row.paired and c.summary["baseline_model"] == "ref-softmax" and c.summary["candidate_model"] == "ref-ssmax"
    gained, lost = int(((soft == 0) & (ss == 1)).sum()), int(((soft == 1) & (ss == 0)).sum())
    assert row.p_value == pytest.approx(binomtest(gained, gained + lost, 0.5).pvalue, rel=1e-12)
    # a folder of runs (as a sweep writes) with the run= selector gives the same comparison
    by_run = compare_runs(tmp_path / "ref", base_select=["run=softmax"], cand_select=["run=ssmax"])
    assert by_run.rows.set_index("metric").loc["greedy_correct"].p_value == row.p_value


def test_other_seed_is_unpaired(tmp_path):
    a, _, _ = variants_run(tmp_path / "a")
    b, _, _ = variants_run(tmp_path / "b", seed=99)
    c = compare_runs(a, b)  # another seed draws other prompts: a failing check unless --unpaired says so
    assert c.exit_code == 1 and any("seeds differ" in f for f in c.summary["failed_checks"])
    c = compare_runs(a, b, unpaired=True)
    assert not c.rows.paired.any() and not c.failed_checks and any("seeds differ" in n for n in c.notes)
    assert "unpaired" in to_markdown(c) and "seeds differ" in to_markdown(c)


def test_trials_are_clusters(tmp_path):
    """--draw trial: depths of one trial share needle and haystack, so the trial is the unit."""
    depths = (0, 25, 50, 75, 100)
    rng = np.random.default_rng(3)
    p = rng.random(12)
    soft = (rng.random((12, 5)) < p[:, None]).astype(int).ravel()
    ss = (rng.random((12, 5)) < p[:, None]).astype(int).ravel()
    rows = needle_rows({("softmax", 512): soft, ("ssmax", 512): ss}, depths=depths)
    run = write_run(
        tmp_path / "t", rows, ["depth", "trial", "needle"], "needle", ("answer",), options={"draw": "trial"}
    )
    row = compare_runs(run, base_select=["attention=softmax"], cand_select=["attention=ssmax"]).rows.set_index("metric")
    acc = row.loc["greedy_correct"]
    assert acc.pairs == 60 and acc.units == 12 and acc.test.startswith("paired t")
    per_trial = (ss - soft).reshape(12, 5).mean(axis=1)  # hand-computed: t on the 12 trial means
    # 12 units of 0/1 outcomes: the exact sign-flip p is checked too, and the larger p counts
    import itertools

    from scipy.stats import ttest_1samp

    flips = [
        abs((np.array(signs) * per_trial).mean()) >= abs(per_trial.mean()) - 1e-12
        for signs in itertools.product([1, -1], repeat=12)
    ]
    expected = max(ttest_1samp(per_trial, 0).pvalue, np.mean(flips))
    assert acc.p_value == pytest.approx(expected, rel=1e-9)


# -- calibration ---------------------------------------------------------------------------------


def clustered_rows(rng, repeats, trials, depths, shift=0.0, p=None):
    """Needle-like rows, one cell per repeat: a trial's difficulty is shared by its depths (--draw
    trial). Given the same prompts (p), each side still has its own trial-level deviation: two
    equally good models that disagree trial by trial, consistently across a trial's depths."""
    p = rng.beta(2, 2, (repeats, trials)) if p is None else p
    own = np.clip(p + 0.25 * rng.standard_normal((repeats, trials)) - shift, 0, 1)
    correct = rng.random((repeats, trials, depths)) < own[:, :, None]
    index = np.indices(correct.shape).reshape(3, -1)
    frame = pd.DataFrame(
        {
            "attention": "softmax",
            "model": "m",
            "context_length": index[0],
            "metric": "greedy_correct",
            "seed": 0,
            "depth": index[2],
            "trial": index[1],
            "value": correct.ravel().astype(float),
            "answer": index[1],
        }
    )
    return frame, p


def beyond_noise_rate(paired: bool, shift=0.0, units=("trial",), repeats=400, trials=20, seed=0) -> float:
    """The share of cells (each a comparison of two samples of 20 trials x 5 depths) called beyond noise."""
    rng = np.random.default_rng(seed)
    b, p = clustered_rows(rng, repeats, trials, 5)
    c, _ = clustered_rows(rng, repeats, trials, 5, shift, p if paired else None)  # paired: the same prompts
    b, c = (runs.samples(f, ("depth", "trial"), units, None) for f in (b, c))
    cells = compare_cells(b, c, paired, 0.95)[0]
    assert len(cells) == repeats and cells.paired.all() == paired
    return float(cells.beyond_noise.mean())


@pytest.mark.parametrize("paired", [pytest.param(True, marks=pytest.mark.slow), False])
def test_beyond_noise_rate_is_calibrated(paired):
    """One distribution on both sides: 'beyond noise' about 5% of the time at 95% (400 comparisons:
    a 99.9% binomial band around 0.05 is [0.022, 0.09]); counting every prompt as independent is not.

    The paired case is slow (the most expensive simulation of the fast suite); its fast checks are the
    unpaired case here and the paired needle cells of test_family.py::test_noise_fails_at_most_alpha_of_compares."""
    rate = beyond_noise_rate(paired)
    assert 0.02 <= rate <= 0.09, rate
    naive = beyond_noise_rate(paired, units=("context_length", "depth", "trial"))
    assert naive > 2 * max(rate, 0.05), naive  # what compare did before: the user's 4 of 20


def test_real_shift_is_detected():
    assert beyond_noise_rate(True, shift=0.3, repeats=100, trials=30) > 0.8
    assert beyond_noise_rate(False, shift=0.3, repeats=100, trials=30) > 0.6


# -- effective context length --------------------------------------------------------------------


def ecl_run(folder, accuracy: dict, trials=40, **kw):
    correct = {
        ("softmax", n): [1] * round(a * trials) + [0] * (trials - round(a * trials)) for n, a in accuracy.items()
    }
    rows = needle_rows(correct)
    return write_run(
        folder, rows, ["depth", "trial", "needle"], "needle", ("answer",), options={"draw": "sample"}, **kw
    )


def test_effective_length(tmp_path):
    base = ecl_run(tmp_path / "b", {32: 1.0, 64: 1.0, 128: 0.95, 256: 0.9, 512: 0.3})
    same = compare_runs(base, base)
    ls = same.lengths.set_index("side")
    assert ls.loc["baseline", "effective_length"] == 256
    wilson = [stats.proportion([1] * round(a * 40) + [0] * (40 - round(a * 40))) for a in (1.0, 1.0, 0.95, 0.9, 0.3)]
    expected = stats.effective_length_interval(
        [32, 64, 128, 256, 512], [w.ci_low for w in wilson], [w.ci_high for w in wilson], stats.RULER_THRESHOLD
    )
    assert (ls.loc["baseline", "pessimistic"], ls.loc["baseline", "optimistic"]) == expected
    assert same.exit_code == 0 and "Effective context length" in to_markdown(same)
    worse = ecl_run(tmp_path / "c", {32: 1.0, 64: 0.5, 128: 0.3, 256: 0.2, 512: 0.1})
    c = compare_runs(base, worse, allow_missing=True)
    assert c.exit_code == 1
    assert_reason_everywhere(c, "effective length softmax", "dropped beyond noise", "baseline softmax 256")
    rel = compare_runs(base, base, threshold="rel:0.5").lengths.set_index("side")
    assert rel.loc["baseline", "threshold"] == 0.5 and rel.loc["baseline", "effective_length"] == 256


def test_tokenizer_identity_is_by_content(tokenizer, tmp_path):
    """Two checkpoint folders holding copies of one tokenizer agree; another vocabulary does not."""
    from transformers import AutoTokenizer

    from evalkit.models.loading import tokenizer_identity

    tokenizer.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "b")
    a, b = (tokenizer_identity(AutoTokenizer.from_pretrained(tmp_path / x)) for x in ("a", "b"))
    assert a["name_or_path"] != b["name_or_path"]
    assert runs.tokenizer_of({"model": {"tokenizer": a}}) == runs.tokenizer_of({"model": {"tokenizer": b}})
    assert a["vocab_size"] == len(tokenizer)
    other = AutoTokenizer.from_pretrained(tmp_path / "a")  # a copy: the session's tokenizer stays as it is
    other.add_tokens(["<extra_token>"])
    assert tokenizer_identity(other)["content_hash"] != a["content_hash"]


def test_focus_heads_are_averaged_within_samples(tmp_path):
    """A prompt's heads are one sample; under --draw trial a trial's depths are one unit."""

    def rows(shift):
        return [
            {
                "attention": "softmax",
                "context_length": 1024,
                "depth": d,
                "trial": t,
                "layer": layer,
                "head": head,
                "metric": metric,
                "value": 0.1 * (t + 1) + 0.01 * head + 0.001 * d + shift * (t % 3),
            }
            for t in range(4)
            for d in (0, 50)
            for layer in range(2)
            for head in range(3)
            for metric in ("needle_mass", "entropy", "entropy_norm")
        ]

    keys = ["depth", "trial", "layer", "head"]
    base = write_run(tmp_path / "b", rows(0.0), keys, "focus", options={"draw": "trial"})
    cand = write_run(tmp_path / "c", rows(0.01), keys, "focus", options={"draw": "trial"})
    c = compare_runs(base, cand)
    assert set(c.rows.metric) == {"needle_mass", "entropy_norm"}  # the task's headline metrics
    assert (c.rows.pairs == 8).all() and (c.rows.units == 4).all()  # 8 prompts (depth x trial) in 4 trials
    mass = c.rows.set_index("metric").loc["needle_mass"]
    from scipy.stats import ttest_1samp

    per_trial = [0.01 * (t % 3) for t in range(4)]  # every head and depth of a trial moves by the same amount
    assert mass.delta == pytest.approx(np.mean(per_trial))
    assert mass.p_value == pytest.approx(ttest_1samp(per_trial, 0).pvalue, rel=1e-6)


def test_missing_provenance_on_both_sides_still_pairs(tmp_path):
    """abcdigits rows have no haystack offset (None on both sides): missing equals missing."""
    rng = np.random.default_rng(11)
    soft, ss = (rng.random(30) < 0.6).astype(int), (rng.random(30) < 0.4).astype(int)
    rows = [{**r, "haystack_offset": None} for r in needle_rows({("softmax", 64): soft, ("ssmax", 64): ss})]
    run = write_run(
        tmp_path / "r",
        rows,
        ["depth", "trial", "needle"],
        "needle",
        ("answer", "haystack_offset"),
        options={"draw": "sample"},
    )
    c = compare_runs(run, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    assert c.rows.paired.all() and not c.failed_checks
