"""Family-wise error control and power: simulations through evalkit's own compare functions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from scipy.stats import t as t_dist
from test_compare import needle_rows, write_run

from evalkit.core.metrics import of_task
from evalkit.report import family, runs, stats
from evalkit.report.compare import Tolerance, _verdicts, compare_cells, compare_runs, to_json, to_junit, to_markdown


def test_holm_and_bonferroni_by_hand():
    p = [0.01, 0.04, 0.03, 0.5, math.nan]
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4 x 0.01, max(., 3 x 0.03), max(., 2 x 0.04), 0.5
    assert family.holm(p)[:4] == pytest.approx([0.04, 0.09, 0.09, 0.5]) and math.isnan(family.holm(p)[4])
    assert family.bonferroni([0.01, 0.3]) == pytest.approx([0.02, 0.6])


def test_one_sided_p_values_match_scipy():
    rng = np.random.default_rng(1)
    base, cand = rng.normal(size=30), rng.normal(size=30) - 0.3
    d = stats.paired_difference(base, cand)
    from scipy.stats import ttest_rel

    assert d.p_less == pytest.approx(ttest_rel(cand, base, alternative="less").pvalue, rel=1e-9)
    assert d.p_greater == pytest.approx(ttest_rel(cand, base, alternative="greater").pvalue, rel=1e-9)
    b = np.array([1] * 12 + [0] * 8)
    c = b.copy()
    c[:7] = 0
    c[15] = 1  # 7 lost, 1 gained
    d = stats.paired_difference(b, c)
    assert d.p_less == pytest.approx(binomtest(7, 8, alternative="greater").pvalue)
    assert d.p_greater == pytest.approx(binomtest(1, 8, alternative="greater").pvalue)


def test_unpaired_binary_clusters_have_a_permutation_floor():
    """5 vs 5 trials of 5 depths: no relabelling of 10 trials goes below 1/252; zero spread is no p = 0."""
    clusters = np.repeat(np.arange(5), 5)
    d = stats.unpaired_difference(np.ones(25), np.zeros(25), clusters, clusters)
    assert d.p_less == pytest.approx(1 / 252) and d.p_value >= 2 / 252
    same = stats.unpaired_difference(np.ones(25), np.ones(25), clusters, clusters)
    assert same.p_value == 1.0 and same.p_less == 1.0
    # by hand: every split of the 10 cluster means into 5 + 5
    rng = np.random.default_rng(0)
    b, c = (rng.random(25) < 0.7).astype(float), (rng.random(25) < 0.4).astype(float)
    means = np.concatenate([b.reshape(5, 5).mean(1), c.reshape(5, 5).mean(1)])
    observed = means[5:].mean() - means[:5].mean()
    null = [
        means[[i for i in range(10) if i not in s]].mean() - means[list(s)].mean()
        for s in itertools.combinations(range(10), 5)
    ]
    assert (
        stats.unpaired_difference(b, c, clusters, clusters).p_less
        >= np.mean(np.array(null) <= observed + 1e-12) - 1e-12
    )


# -- coverage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trials, depths, mean, concentration",
    [(5, 5, 0.84, 2.0), (5, 5, 0.5, 2.0), (5, 5, 0.84, 0.5), (10, 5, 0.84, 1.0), (5, 5, 0.97, None), (5, 5, 0.03, 1.0)],
)
def test_accuracy_interval_covers(trials, depths, mean, concentration):
    """>= 93% coverage at 5 trials, with strongly varying trials, and near 0% / 100%."""
    rng = np.random.default_rng(7)
    clusters, covered, reps = np.repeat(np.arange(trials), depths), 0, 600
    for _ in range(reps):
        p = (
            rng.beta(mean * concentration, (1 - mean) * concentration, trials)
            if concentration
            else np.full(trials, mean)
        )
        e = stats.proportion((rng.random((trials, depths)) < p[:, None]).astype(float).ravel(), clusters)
        covered += e.ci_low <= mean <= e.ci_high
    assert covered / reps >= 0.93 - 2 * math.sqrt(0.93 * 0.07 / reps), covered / reps


def test_interval_rule_is_continuous_and_extremes_use_units():
    clusters = np.repeat(np.arange(5), 5)
    at_one = stats.proportion(np.ones(10), np.repeat([0, 1], 5))  # 10/10 from 2 trials: 2 units, not 10
    assert at_one.ci_low == pytest.approx(0.025**0.5) and at_one.ci_high == 1.0
    # 23/25 with the misses in two trials (design effect 1): t(4), not the normal quantile, as just above deff 1
    a = np.ones(25)
    a[[0, 5]] = 0
    e = stats.proportion(a, clusters)
    q = t_dist.ppf(0.975, 4)
    se = math.sqrt(0.92 * 0.08 / 25)
    centre, half = (
        (0.92 + q * q / 50) / (1 + q * q / 25),
        q * math.sqrt(0.92 * 0.08 / 25 + q**4 / 4 / 625 / q / q) / (1 + q * q / 25),
    )
    assert e.ci_low == pytest.approx(min(centre - half, 0.92 - q * se), rel=1e-9)


# -- calibration by simulation ------------------------------------------------------------------


def noise_cells(rng, cells: int, trials=8, depths=5):
    """Needle-like paired cells, one shared trial structure: both sides are the same model (no shift)."""
    p = rng.beta(2, 2, (cells, trials))
    rows = []
    for _side in (0, 1):
        own = np.clip(p + 0.2 * rng.standard_normal((cells, trials)), 0, 1)
        correct = rng.random((cells, trials, depths)) < own[:, :, None]
        index = np.indices(correct.shape).reshape(3, -1)
        rows.append(
            pd.DataFrame(
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
        )
    return [runs.samples(f, ("depth", "trial"), ("trial",), None) for f in rows]


def false_alarm_share(cells: int, compares: int, correction="holm", seed=0) -> float:
    rng = np.random.default_rng(seed)
    b, c = noise_cells(rng, cells * compares)
    table = compare_cells(b, c, True, 0.95)[0]
    alarms = 0
    for k in range(compares):  # each compare decides on its own family of `cells` cells
        part = table.iloc[k * cells : (k + 1) * cells]
        rows, _ = _verdicts(part, Tolerance(absolute=0.0), {}, False, correction, metrics=of_task("needle"))
        alarms += bool(rows.regression.any())
    return alarms / compares


@pytest.mark.parametrize(
    "cells, compares",
    [
        (1, 300),
        (4, 150),
        # the large families simulate 1,200 and 1,950 cells (minutes of CPU): slow; the fast check of the
        # same Holm rule on a family of cells is (4, 150), and test_without_correction_noise_fails_large_grids
        # shows a 20-cell family needs it
        pytest.param(20, 60, marks=pytest.mark.slow),
        pytest.param(65, 30, marks=pytest.mark.slow),
    ],
)
def test_noise_fails_at_most_alpha_of_compares(cells, compares):
    share = false_alarm_share(cells, compares)
    # the nominal 5% plus two binomial standard errors of the simulation
    assert share <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / compares), share


def test_without_correction_noise_fails_large_grids():
    # what compare did before: each cell at 95%; 20 compares of 20 cells (about 1 - 0.95^20 = 64% expected) are
    # enough to tell that from 5%, at a third of the 60 compares' cost
    assert false_alarm_share(20, 20, "none") > 0.15


def test_detection_at_the_size_plan_predicts():
    """A shift of D on one cell, at the trials the power formula asks for: detected about 80% of the time."""
    detect, trials, depths = 0.25, None, 5
    sd = family.binary_unit_sd(0.7, detect)  # per-unit sd of a difference, units as the sample
    trials = family.units_needed(sd, detect, 0.05, 0.8)
    rng = np.random.default_rng(3)
    hits, reps = 0, 80
    for _ in range(reps):
        p = np.full(trials, 0.7)
        b = (rng.random((trials, depths)) < p[:, None]).astype(float).ravel()
        c = (rng.random((trials, depths)) < (p - detect)[:, None]).astype(float).ravel()
        d = stats.paired_difference(b, c, np.repeat(np.arange(trials), depths))
        hits += d.p_less < 0.05
    assert hits / reps >= 0.8 - 2 * math.sqrt(0.16 / reps), (trials, hits / reps)


# -- done-when: a RULER-sized grid, and the collapse ---------------------------------------------


def ruler_like_run(folder, seed, lengths=(4096, 8192, 16384, 32768, 65536), tasks=13, samples=10, accuracy=0.8):
    """One model, 13 'tasks' as variants of the cell key (one cell per task x length), 10 samples each."""
    rng = np.random.default_rng(seed)
    correct = {(f"task{k}", n): (rng.random(samples) < accuracy).astype(int) for k in range(tasks) for n in lengths}
    rows = needle_rows(correct)
    return write_run(
        folder,
        rows,
        ["depth", "trial", "needle"],
        "needle",
        ("answer",),
        seed=seed,
        options={"draw": "sample", "needle": "passkey"},
    )


def test_ruler_sized_grid_against_itself_with_another_seed_passes(tmp_path):
    """65 cells (13 tasks x 5 lengths), the same model with another seed: passes in >= 95% of seeds."""
    passed = 0
    seeds = 20
    for seed in range(seeds):
        a = ruler_like_run(tmp_path / f"a{seed}", 1000 + seed)
        b = ruler_like_run(tmp_path / f"b{seed}", 2000 + seed)
        c = compare_runs(a, b, unpaired=True)
        assert c.summary["cells"] == 130 and "Holm" in c.summary["correction"]
        passed += c.exit_code == 0
    assert passed / seeds >= 0.95


def collapse_run(folder, accuracy: dict, trials=5, depths=(0, 25, 50, 75, 100), seed=1234, scoring="generate"):
    rng = np.random.default_rng(0 if accuracy[1024] > 0.5 else 1)
    rows = []
    metrics = ("exact_match", "contains") if scoring == "generate" else ("greedy_correct",)
    for length, acc in accuracy.items():
        hits = (rng.random(trials * len(depths)) < acc).astype(int)
        if acc > 0.5:
            hits[:] = 1
            hits[3] = 0  # 24 of 25
        for k, ok in enumerate(hits):
            trial, depth = divmod(k, len(depths))
            base = {
                "attention": "softmax",
                "context_length": length,
                "depth": depths[depth],
                "trial": trial,
                "needle": "passkey",
                "answer": f"{1000 + trial}",
            }
            rows += [{**base, "metric": m, "value": float(ok)} for m in metrics]
            if scoring == "logprob":
                rows.append({**base, "metric": "answer_logprob", "value": -0.5 if ok else -6.0 - 0.1 * k})
    return write_run(
        folder,
        rows,
        ["depth", "trial", "needle"],
        "needle",
        ("answer",),
        seed=seed,
        options={"draw": "trial", "needle": "passkey", "scoring": scoring},
    )


@pytest.mark.parametrize("scoring", ["generate", "logprob"])
def test_collapse_at_five_trials_fails(tmp_path, scoring):
    """SSMax s = 0.43 on SmolLM2 (0.96 -> 0.04 at 1k, 0.92 -> 0.00 at 2k): 5 trials under --draw trial."""
    base = collapse_run(tmp_path / "base", {1024: 0.96, 2048: 0.96}, scoring=scoring)
    cand = collapse_run(tmp_path / "cand", {1024: 0.04, 2048: 0.0}, scoring=scoring)
    c = compare_runs(base, cand)
    assert c.exit_code == 1 and len(c.regressions) >= 2, c.rows[["metric", "context_length", "p_worse", "p_adjusted"]]
    assert "Holm" in c.summary["correction"]
    for text in (to_markdown(c), to_json(c), to_junit(c)):
        assert "Holm" in text and ("p_adjusted" in text or "adjusted p" in text or "adj. p" in text)
    # each cell on its own cannot get below 1/32, which a 4-cell Holm would need below 0.0125: said as power
    assert c.summary["underpowered"] >= 1 or scoring == "logprob"


def test_power_is_in_every_output(tmp_path):
    base = collapse_run(tmp_path / "base", {1024: 0.96, 2048: 0.96})
    c = compare_runs(base, base, detect=0.1)
    assert c.exit_code == 0
    power = next(ch for ch in c.checks if ch["check"] == "power")
    assert power["passed"] and "underpowered" in power["reason"]
    assert compare_runs(base, base, detect=0.1, require_power=True).exit_code == 1
    md, js, ju = to_markdown(c), to_json(c), to_junit(c)
    assert "minimal_detectable" in js and "detectable" in md and "underpowered" in ju


def test_dtype_and_device_mismatch_fail_in_every_output(tmp_path):
    import json

    base = collapse_run(tmp_path / "base", {1024: 0.96, 2048: 0.96})
    cand = collapse_run(tmp_path / "cand", {1024: 0.96, 2048: 0.96})
    for folder, dtype, device in ((base, "float32", "cpu"), (cand, "bfloat16", "cuda:0")):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["model"].update(dtype=dtype, device=device)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    c = compare_runs(base, cand)
    assert c.exit_code == 1
    for text in (to_markdown(c), to_json(c), to_junit(c)):
        assert "dtype differs" in text and "device class differs" in text
    allowed = compare_runs(base, cand, allow_dtype_change=True)
    assert allowed.exit_code == 1 and any("dtype" in n for n in allowed.notes)  # the device still differs
    assert compare_runs(base, cand, unpaired=True).exit_code == 0
    assert any("device class differs" in n for n in compare_runs(base, cand, unpaired=True).notes)
