"""evalkit.report.stats against independent references (scipy) and by calibration on synthetic data."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest, ttest_1samp, ttest_rel

from evalkit.report import stats


def test_wilson_matches_scipy():
    for k, n in [(0, 10), (7, 10), (10, 10), (33, 40), (1, 200)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        est = stats.proportion([1.0] * k + [0.0] * (n - k))
        assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
        assert est.n == n and est.units == n and est.method == "wilson"


def test_mean_is_the_t_interval_and_clusters_are_units():
    y = np.random.default_rng(1).normal(2.0, 1.0, 9)
    ci = ttest_1samp(y, 0).confidence_interval(0.95)
    est = stats.mean(y)
    assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    # equal-size clusters: the interval is the t interval of the cluster means, with k - 1 df
    values = np.random.default_rng(2).normal(size=(6, 4))
    clustered = stats.mean(values.ravel(), np.repeat(np.arange(6), 4))
    ref = ttest_1samp(values.mean(axis=1), 0).confidence_interval(0.95)
    assert (clustered.ci_low, clustered.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert clustered.units == 6 and clustered.n == 24


def test_perplexity_interval_is_exp_of_nll_interval():
    nll = stats.mean([2.0, 2.2, 2.1, 2.5])
    ppl = nll.exp()
    assert (ppl.value, ppl.ci_low, ppl.ci_high) == pytest.approx(
        (math.exp(nll.value), math.exp(nll.ci_low), math.exp(nll.ci_high))
    )


def test_mcnemar_exact_matches_binomtest():
    rng = np.random.default_rng(3)
    base, cand = (rng.random(60) < 0.5).astype(float), (rng.random(60) < 0.7).astype(float)
    lost, gained = int(((base == 1) & (cand == 0)).sum()), int(((base == 0) & (cand == 1)).sum())
    diff = stats.paired_difference(base, cand)
    assert diff.p_value == pytest.approx(binomtest(lost, lost + gained, 0.5).pvalue, abs=1e-12)
    assert diff.delta == pytest.approx(cand.mean() - base.mean())
    assert "McNemar" in diff.test and diff.pairs == 60


def test_newcombe_paired_interval_covers_and_is_antisymmetric():
    base = np.array([1] * 12 + [0] * 2 + [1] * 1 + [0] * 1, dtype=float)
    cand = np.array([1] * 12 + [1] * 2 + [0] * 1 + [0] * 1, dtype=float)
    low, high = stats.newcombe_paired(base, cand)
    back = stats.newcombe_paired(cand, base)
    assert (low, high) == pytest.approx((-back[1], -back[0]), abs=1e-12)  # swapping sides mirrors it
    assert low < 1 / 16 < high
    covered = 0
    for seed in range(500):  # correlated pairs, true difference 0.1
        rng = np.random.default_rng(seed)
        u = rng.random(40)
        b, c = (u < 0.6).astype(float), (u < 0.7).astype(float)
        flip = rng.random(40) < 0.2
        c[flip] = (rng.random(flip.sum()) < 0.7).astype(float)
        lo, hi = stats.newcombe_paired(b, c)
        covered += lo <= 0.1 <= hi
    assert covered / 500 >= 0.92


def test_paired_t_matches_scipy():
    rng = np.random.default_rng(4)
    b = rng.normal(size=15)
    c = b + rng.normal(0.4, 1.0, 15)
    diff = stats.paired_difference(b, c)
    ref = ttest_rel(c, b)
    assert diff.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (diff.ci_low, diff.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_cluster_bootstrap_matches_a_hand_rolled_one():
    rng = np.random.default_rng(5)
    values, clusters = rng.normal(size=30), np.repeat(np.arange(10), 3)
    low, high = stats.cluster_bootstrap(values, clusters, lambda v, c: v.mean(), resamples=500, seed=7)
    hand = np.random.default_rng(7)
    means = []
    for _ in range(500):
        picked = hand.integers(0, 10, 10)
        means.append(np.concatenate([values[clusters == k] for k in picked]).mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)


def test_clustered_proportion_is_calibrated():
    """Trials whose prompts share a needle: rows are correlated, the interval must cover anyway."""
    k, m, covered = 10, 5, 0
    clusters = np.repeat(np.arange(k), m)
    for seed in range(400):
        rng = np.random.default_rng(seed)
        p = rng.beta(2, 2, size=k)  # each trial has its own difficulty: strong within-trial correlation
        values = (rng.random((k, m)) < p[:, None]).astype(float).ravel()
        est = stats.proportion(values, clusters)
        covered += est.ci_low <= 0.5 <= est.ci_high
    assert 0.92 <= covered / 400 <= 0.995


def test_paired_difference_false_alarm_rate_is_about_alpha():
    alarms = 0
    for seed in range(400):
        rng = np.random.default_rng(seed)
        base = rng.normal(size=20)
        cand = base + rng.normal(0, 0.5, 20)  # no shift: same distribution
        alarms += stats.paired_difference(base, cand).beyond_noise
    assert 0.02 <= alarms / 400 <= 0.09


def test_effective_length_is_rulers_convention():
    lengths = [1024, 2048, 4096, 8192]
    assert stats.effective_length(lengths, [0.95, 0.9, 0.7, 0.9], 0.85) == 2048  # stops at the first drop
    assert stats.effective_length(lengths, [0.5, 0.9, 0.9, 0.9], 0.85) is None
    assert stats.effective_length_interval(lengths, [0.9, 0.8, 0.6, 0.5], [0.99, 0.95, 0.9, 0.8], 0.85) == (1024, 4096)


def test_few_identical_unit_differences_are_not_beyond_noise():
    """Three trials that each lose one of five depths: zero variance, but 3 units cannot show much."""
    base = np.ones(15)
    cand = np.ones(15)
    cand[[0, 5, 10]] = 0
    diff = stats.paired_difference(base, cand, clusters=np.repeat([0, 1, 2], 5))
    assert diff.p_value == pytest.approx(0.25)  # 2 of the 8 sign patterns are as extreme
    assert not diff.beyond_noise
    assert -1 <= diff.ci_low <= diff.ci_high <= 1


def test_sign_flip_p_matches_enumeration_by_hand():
    import itertools

    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, 0.1])
    observed = abs(d.mean())
    hand = np.mean([abs((np.array(s) * d).mean()) >= observed - 1e-12 for s in itertools.product([1, -1], repeat=6)])
    assert stats.sign_flip_p(d, np.ones(6)) == pytest.approx(hand)


def test_weighted_mean_is_the_ratio_estimator():
    rng = np.random.default_rng(7)
    x, w = rng.normal(3, 1, 8), rng.integers(1, 50, 8).astype(float)
    est = stats.weighted_mean(x, w)
    assert est.value == pytest.approx(np.average(x, weights=w))
    # by hand: the linearized standard error of sum(w x) / sum(w), k - 1 degrees of freedom
    resid = w * (x - est.value)
    se = math.sqrt(8 / 7 * (resid**2).sum()) / w.sum()
    from scipy.stats import t

    assert (est.ci_low, est.ci_high) == pytest.approx(
        (est.value - t.ppf(0.975, 7) * se, est.value + t.ppf(0.975, 7) * se)
    )
    equal = stats.weighted_mean(x, np.ones(8))  # equal weights: the plain t interval
    assert (equal.ci_low, equal.ci_high) == pytest.approx((stats.mean(x).ci_low, stats.mean(x).ci_high))


def test_estimates_per_group_with_units_and_seeds():
    import pandas as pd

    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {"g": np.repeat(["a", "b"], 12), "trial": np.tile(np.repeat(np.arange(4), 3), 2), "value": rng.normal(size=24)}
    )
    table = stats.estimates(frame, ["g"], ["trial"])
    for row in table.itertuples():
        part = frame[frame.g == row.g]
        ci = ttest_1samp(part.groupby("trial").value.mean(), 0).confidence_interval(0.95)
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high)) and (row.n, row.units) == (12, 4)
    # a seed column splits units: trial 0 of seed 1 and trial 0 of seed 2 are different draws
    seeded = frame.assign(seed=np.tile([1, 2], 12))
    assert set(stats.estimates(seeded, ["g"], ["trial"]).units) == {8}
    assert len(set(stats.unit_keys(frame, []))) == 24  # no unit columns: every row its own unit


def test_clipped_and_compact():
    import pandas as pd

    e = stats.mean([0.0, 0.0, 0.1])  # a fraction whose t interval passes 0
    assert e.ci_low < 0 and stats.clipped(e).ci_low == 0.0 and stats.clipped(e).ci_high == e.ci_high
    table = pd.DataFrame({"attention": ["softmax"], **stats.columns(e, "needle_mass"), "n": [3]})
    assert list(stats.compact(table).columns) == ["attention", "needle_mass", "n"]
    assert stats.compact(table).needle_mass.iloc[0] == f"{e.value:.4g} [{e.ci_low:.4g}, {e.ci_high:.4g}]"
