"""The statistics every summary, plot, comparison and gate uses: one module, one way each.

Conventions (design.md, "Numbers people decide from"):

- The resampling unit is the independent unit, a *cluster*: a needle trial (its depths and
  lengths share needle and haystack), a perplexity window (its positions share text), a focus
  trial. Rows of one cluster are never treated as independent.
- Proportions (``greedy_correct``, accuracy): Wilson score interval on the effective sample size
  n / deff, where the design effect deff >= 1 comes from the between-cluster variance (Kish). With
  one row per cluster, or when every cluster agrees with the rest, it is the plain Wilson interval.
- Means of continuous metrics (NLL, log-probs, attention mass): a t interval on the cluster-robust
  standard error (ratio estimator over clusters). A percentile bootstrap over 4 windows covers
  only about 80% of the time; the t interval with k - 1 degrees of freedom is calibrated at
  small k and equals the bootstrap at large k. ``cluster_bootstrap`` is kept for statistics
  without a closed form (the effective context length's spread across resamples).
- Perplexity's interval is exp of the NLL interval.
- Paired comparisons (both sides scored on the same prompts): for a 0/1 metric with one pair per
  cluster, the exact McNemar test on the discordant pairs and Newcombe's paired score interval
  (method 10); with several pairs per cluster, a t interval on the per-cluster mean differences.
  For 0/1 metrics on at most 16 units the p-value is also checked by the exact sign-flip
  (randomization) test, and the larger one counts. Continuous metrics: t interval on the
  per-cluster mean differences.
- Unpaired comparisons: Newcombe's hybrid score interval for two proportions (method 10 of
  Newcombe 1998, unpaired); Welch's t interval on cluster means otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def _t(confidence: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


@dataclass(frozen=True)
class Estimate:
    """A number with its interval: ``value`` in [ci_low, ci_high] at ``confidence``.

    ``n`` counts rows, ``units`` the independent clusters behind them; ``method`` names the interval.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    units: int
    method: str
    confidence: float = CONFIDENCE

    def exp(self) -> Estimate:
        """Perplexity from mean NLL: exp is monotone, so the interval maps through it."""
        return Estimate(
            math.exp(self.value),
            math.exp(self.ci_low),
            math.exp(self.ci_high),
            self.n,
            self.units,
            f"exp({self.method})",
            self.confidence,
        )

    def as_dict(self, prefix: str = "") -> dict:
        return {
            f"{prefix}value" if prefix else "value": self.value,
            f"{prefix}ci_low": self.ci_low,
            f"{prefix}ci_high": self.ci_high,
            f"{prefix}n": self.n,
            f"{prefix}units": self.units,
        }


@dataclass(frozen=True)
class Difference:
    """candidate - baseline with its interval, a two-sided p-value for "no difference", and the two
    one-sided ones: ``p_less`` for "candidate below baseline", ``p_greater`` for "above". A regression
    test is one-sided (only "worse" fails), so compare reads the one for the metric's bad direction."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    pairs: int  # rows paired (or, unpaired, the smaller side's rows)
    units: int  # independent clusters behind the interval
    test: str  # which test and unit, for the report
    confidence: float = CONFIDENCE
    p_less: float = math.nan
    p_greater: float = math.nan
    se: float = math.nan  # standard error of delta (NaN where the test has none)

    def p_one_sided(self, worse_when_lower: bool) -> float:
        return self.p_less if worse_when_lower else self.p_greater

    @property
    def beyond_noise(self) -> bool:
        """p below 1 - confidence and an interval that excludes 0: the two never disagree in a report."""
        if not math.isfinite(self.p_value):
            return False
        return bool(self.p_value < 1 - self.confidence and (self.ci_low > 0 or self.ci_high < 0))


def _as_arrays(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=float)
    if clusters is None:
        return values, np.arange(len(values))
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return values, codes


def _present(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    """The non-missing values and their cluster codes, renumbered 0..k-1."""
    values, codes = _as_arrays(values, clusters)
    keep = ~np.isnan(values)
    return values[keep], np.unique(codes[keep], return_inverse=True)[1]


def _cluster_sums(values: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = int(codes.max()) + 1 if len(codes) else 0
    return np.bincount(codes, values, minlength=k), np.bincount(codes, minlength=k).astype(float)


def _ratio_se(sums: np.ndarray, counts: np.ndarray) -> float:
    """Standard error of sum(sums) / sum(counts) with clusters as the sampling unit."""
    k = len(sums)
    if k < 2:
        return math.nan
    mean = sums.sum() / counts.sum()
    resid = sums - mean * counts
    return math.sqrt(k / (k - 1) * float((resid**2).sum())) / counts.sum()


def wilson(k: float, n: float, confidence: float = CONFIDENCE, df: float | None = None) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (n may be an effective, non-integer size);
    with ``df``, the t quantile replaces the normal one (few clusters behind n)."""
    if n <= 0:
        return math.nan, math.nan
    z = _z(confidence) if df is None else _t(confidence, df)
    p, denom = k / n, 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def is_binary(values) -> bool:
    values = np.asarray(values, dtype=float)
    return len(values) > 0 and bool(np.isin(values, (0.0, 1.0)).all())


def proportion(values, clusters=None, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of 0/1 values with a cluster-adjusted Wilson interval: one continuous rule.

    The effective sample size is n / deff (Kish's design effect from the between-cluster
    variance, at least 1) and the quantile is Student's t with k - 1 degrees of freedom: the
    variance is estimated from k units whatever deff turns out to be, so there is no switch at
    deff 1. Wilson's interval narrows as t^2 / n_eff grows, so the t interval on the
    cluster-robust standard error bounds it from outside. Where clustering cannot be estimated
    (every row 0 or every row 1, fewer clusters than rows) the clusters are the sample: the exact
    (Clopper-Pearson) bound for k of k units. Independent rows (one per cluster): plain Wilson.
    """
    from scipy.stats import beta as beta_dist

    values, codes = _present(values, clusters)
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, "wilson", confidence)
    sums, counts = _cluster_sums(values, codes)
    p = float(values.mean())
    k = len(sums)
    alpha = 1 - confidence
    if p in (0.0, 1.0) and k < n:  # no spread to measure the clustering from: the k units are the sample
        bound = float(beta_dist.ppf(alpha / 2, k, 1)) if k else math.nan  # exact for k of k (or 0 of k mirrored)
        low, high = (bound, 1.0) if p == 1.0 else (0.0, 1 - bound)
        return Estimate(p, low, high, n, k, f"exact on {k} units (no spread to estimate clustering)", confidence)
    if k == n:  # independent rows: Wilson's own interval
        low, high = wilson(p * n, n, confidence)
        return Estimate(p, float(low), float(high), n, k, "wilson", confidence)
    robust = _ratio_se(sums, counts)
    deff = max(1.0, robust**2 / (p * (1 - p) / n * k / (k - 1)))  # the same k / (k - 1) on both sides
    n_eff, df = n / deff, max(k - 1, 1)  # the variance comes from k units, whatever deff says
    low, high = wilson(p * n_eff, n_eff, confidence, df=df)
    half = _t(confidence, df) * max(robust, math.sqrt(p * (1 - p) / n))
    low, high = max(0.0, min(low, p - half)), min(1.0, max(high, p + half))
    method = "wilson (t)" if deff == 1.0 else f"wilson (t), design effect {deff:.2f}"
    return Estimate(p, float(low), float(high), n, k, method, confidence)


def mean(values, clusters=None, confidence: float = CONFIDENCE) -> Estimate:
    """Mean with a cluster-robust t interval (k - 1 degrees of freedom over k clusters)."""
    values, codes = _present(values, clusters)
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, "t", confidence)
    sums, counts = _cluster_sums(values, codes)
    centre = float(values.mean())
    se = _ratio_se(sums, counts)
    if not math.isfinite(se):
        return Estimate(centre, math.nan, math.nan, n, len(sums), "t", confidence)
    half = _t(confidence, len(sums) - 1) * se
    return Estimate(centre, float(centre - half), float(centre + half), n, len(sums), "t", confidence)


def estimate(values, clusters=None, confidence: float = CONFIDENCE) -> Estimate:
    """The interval the metric's kind calls for: Wilson for 0/1 values, t for the rest."""
    return (proportion if is_binary(values) else mean)(values, clusters, confidence)


def cluster_bootstrap(
    values, clusters, statistic, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile interval of ``statistic(values, clusters)`` over resamples of whole clusters."""
    values, codes = _as_arrays(values, clusters)
    k = int(codes.max()) + 1 if len(codes) else 0
    members = [np.flatnonzero(codes == c) for c in range(k)]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        picked = rng.integers(0, k, k)
        index = np.concatenate([members[c] for c in picked])
        labels = np.concatenate([np.full(len(members[c]), j) for j, c in enumerate(picked)])
        stats.append(statistic(values[index], labels))
    low, high = np.nanquantile(np.asarray(stats, dtype=float), [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(low), float(high)


# -- comparisons ---------------------------------------------------------------------------------


def mcnemar_exact(base, cand) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at 1/2."""
    from scipy.stats import binom

    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    lost, gained = int(((base == 1) & (cand == 0)).sum()), int(((base == 0) & (cand == 1)).sum())
    m = lost + gained
    if m == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(lost, gained), m, 0.5)))


def mcnemar_one_sided(base, cand) -> tuple[float, float]:
    """Exact one-sided McNemar p-values (p_less: candidate below baseline, p_greater: above)."""
    from scipy.stats import binom

    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    lost, gained = int(((base == 1) & (cand == 0)).sum()), int(((base == 0) & (cand == 1)).sum())
    m = lost + gained
    if m == 0:
        return 1.0, 1.0
    return float(binom.sf(lost - 1, m, 0.5)), float(binom.sf(gained - 1, m, 0.5))


def newcombe_paired(base, cand, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's (1998) method 10 interval for p_cand - p_base on paired 0/1 outcomes."""
    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    n = len(base)
    e = float(((cand == 1) & (base == 1)).sum())
    f = float(((cand == 1) & (base == 0)).sum())
    g = float(((cand == 0) & (base == 1)).sum())
    h = float(((cand == 0) & (base == 0)).sum())
    p1, p2 = (e + f) / n, (e + g) / n
    (l1, u1), (l2, u2) = wilson(e + f, n, confidence), wilson(e + g, n, confidence)
    num = e * h - f * g
    denom = (e + f) * (g + h) * (e + g) * (f + h)
    phi = 0.0 if denom == 0 else (max(num - n / 2, 0.0) if num > 0 else num) / math.sqrt(denom)
    d = p1 - p2
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    eps = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return float(max(-1.0, d - delta)), float(min(1.0, d + eps))


def newcombe_unpaired(base, cand, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p_cand - p_base on independent samples."""
    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    p1, p2 = cand.mean(), base.mean()
    (l1, u1), (l2, u2) = wilson(cand.sum(), len(cand), confidence), wilson(base.sum(), len(base), confidence)
    d = p1 - p2
    return float(max(-1.0, d - math.hypot(p1 - l1, u2 - p2))), float(min(1.0, d + math.hypot(u1 - p1, p2 - l2)))


def _t_test(centre: float, se: float, df: float, confidence: float) -> tuple[float, float, float, float, float]:
    """(low, high, two-sided p, p_less, p_greater) of a t statistic centre / se."""
    from scipy.stats import t

    if not math.isfinite(se) or df < 1:
        return (math.nan,) * 5
    if se == 0:
        return centre, centre, (1.0 if centre == 0 else 0.0), (0.0 if centre < 0 else 1.0), (0.0 if centre > 0 else 1.0)
    half = _t(confidence, df) * se
    return (
        float(centre - half),
        float(centre + half),
        float(2 * t.sf(abs(centre) / se, df)),
        float(t.cdf(centre / se, df)),
        float(t.sf(centre / se, df)),
    )


def paired_difference(base, cand, clusters=None, confidence: float = CONFIDENCE, kind: str | None = None) -> Difference:
    """candidate - baseline over rows scored on the same prompts (aligned arrays). ``kind`` is the
    metric's declared kind (``evalkit.core.metrics``): a bounded score (RULER's string match) gets
    the t test on per-unit differences checked by the exact sign flip, even where its values happen
    to be 0/1; None: 0/1 values are treated as binary."""
    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    if len(base) != len(cand):
        raise ValueError("paired arrays differ in length")
    keep = ~(np.isnan(base) | np.isnan(cand))
    base, cand = base[keep], cand[keep]
    _, codes = _as_arrays(cand, None if clusters is None else np.asarray(clusters, dtype=object)[keep])
    _, codes = np.unique(codes, return_inverse=True)
    n = len(base)
    if n == 0:
        return Difference(math.nan, math.nan, math.nan, math.nan, 0, 0, "no pairs", confidence)
    k = int(codes.max()) + 1
    delta = float(cand.mean() - base.mean())
    binary = kind in (None, "binary") and is_binary(base) and is_binary(cand)
    bounded = binary or kind == "score"
    if binary and k == n:
        low, high = newcombe_paired(base, cand, confidence)
        p_less, p_greater = mcnemar_one_sided(base, cand)
        return Difference(
            delta,
            low,
            high,
            mcnemar_exact(base, cand),
            n,
            k,
            f"exact McNemar, Newcombe paired interval; {n} pairs",
            confidence,
            p_less,
            p_greater,
            math.sqrt(max((cand - base).var(ddof=1), 0.0) / n) if n > 1 else math.nan,
        )
    sums, counts = _cluster_sums(cand - base, codes)
    se = _ratio_se(sums, counts)
    low, high, p, p_less, p_greater = _t_test(delta, se, k - 1, confidence)
    test = "paired t on per-cluster differences"
    if bounded:
        low, high = max(low, -1.0), min(high, 1.0)
        if k <= SIGN_FLIP_MAX_UNITS and math.isfinite(p):
            # 0/1 outcomes and bounded scores make equal unit differences likely (three trials that each
            # lose one depth: variance 0, t's p = 0); the exact sign-flip test needs no variance estimate.
            # With one pair per unit and 0/1 values it is the exact McNemar test.
            flip_two, flip_less, flip_greater = sign_flip_ps(sums, counts)
            p, p_less, p_greater = max(p, flip_two), max(p_less, flip_less), max(p_greater, flip_greater)
            test += " with exact sign-flip p"
    unit = "pairs" if k == n else f"units ({n} pairs)"
    return Difference(delta, low, high, p, n, k, f"{test}; {k} {unit}", confidence, p_less, p_greater, se)


SIGN_FLIP_MAX_UNITS = 16  # 2**16 sign patterns enumerated exactly; above this the t test is good


def sign_flip_p(sums: np.ndarray, counts: np.ndarray) -> float:
    """Two-sided exact randomization p-value of a paired mean difference: under "no difference"
    each unit's difference is as likely negated, so every pattern of unit signs is equally likely."""
    k = len(sums)
    observed = abs(sums.sum()) / counts.sum()
    signs = 1 - 2 * ((np.arange(2**k)[:, None] >> np.arange(k)) & 1)  # (2^k, k) of +-1
    flipped = np.abs(signs @ sums) / counts.sum()
    return float(np.mean(flipped >= observed - 1e-12 * max(1.0, observed)))


def sign_flip_ps(sums: np.ndarray, counts: np.ndarray) -> tuple[float, float, float]:
    """(two-sided, p_less, p_greater) exact sign-flip p-values of a paired mean difference."""
    k = len(sums)
    observed = sums.sum() / counts.sum()
    signs = 1 - 2 * ((np.arange(2**k)[:, None] >> np.arange(k)) & 1)  # (2^k, k) of +-1
    flipped = signs @ sums / counts.sum()
    eps = 1e-12 * max(1.0, abs(observed))
    return (
        float(np.mean(np.abs(flipped) >= abs(observed) - eps)),
        float(np.mean(flipped <= observed + eps)),
        float(np.mean(flipped >= observed - eps)),
    )


PERMUTATIONS = 4000  # random relabellings when the exact enumeration is larger than this


def cluster_permutation_ps(base_sums, base_counts, cand_sums, cand_counts, seed: int = 0) -> tuple[float, float, float]:
    """(two-sided, p_less, p_greater) of candidate - baseline mean under relabelling whole clusters
    between the sides: exact when the relabellings number at most PERMUTATIONS, else that many
    random ones (the observed labelling counted in, so p >= 1 / (draws + 1))."""
    from itertools import combinations

    sums = np.concatenate([base_sums, cand_sums]).astype(float)
    counts = np.concatenate([base_counts, cand_counts]).astype(float)
    kb, k = len(base_sums), len(sums)
    if math.comb(k, kb) <= PERMUTATIONS:
        labels = np.zeros((math.comb(k, kb), k), dtype=bool)  # True: baseline
        for row, picked in enumerate(combinations(range(k), kb)):
            labels[row, list(picked)] = True
    else:
        rng = np.random.default_rng(seed)
        order = np.argsort(rng.random((PERMUTATIONS, k)), axis=1)
        labels = np.zeros((PERMUTATIONS + 1, k), dtype=bool)
        np.put_along_axis(labels[1:], order[:, :kb], True, axis=1)
        labels[0, :kb] = True  # the observed labelling
    base_mean = (labels @ sums) / (labels @ counts)
    cand_mean = (~labels @ sums) / (~labels @ counts)
    null = cand_mean - base_mean  # (labellings,)
    observed = cand_sums.sum() / cand_counts.sum() - base_sums.sum() / base_counts.sum()
    eps = 1e-12 * max(1.0, abs(observed))
    centre = null.mean()
    return (
        float(np.mean(np.abs(null - centre) >= abs(observed - centre) - eps)),
        float(np.mean(null <= observed + eps)),
        float(np.mean(null >= observed - eps)),
    )


def unpaired_difference(
    base, cand, base_clusters=None, cand_clusters=None, confidence: float = CONFIDENCE
) -> Difference:
    """candidate - baseline over independent samples (different prompts)."""
    from scipy.stats import norm

    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    b, c = mean(base, base_clusters, confidence), mean(cand, cand_clusters, confidence)
    delta = c.value - b.value
    units = min(b.units, c.units)
    if is_binary(base) and is_binary(cand) and base_clusters is None and cand_clusters is None:
        low, high = newcombe_unpaired(base, cand, confidence)
        pooled = (base.sum() + cand.sum()) / (len(base) + len(cand))
        se = math.sqrt(pooled * (1 - pooled) * (1 / len(base) + 1 / len(cand)))
        p = 1.0 if se == 0 else float(2 * norm.sf(abs(delta) / se))
        # se 0: both sides all 0 or all 1 alike, nothing differs
        p_less, p_greater = (1.0, 1.0) if se == 0 else (float(norm.cdf(delta / se)), float(norm.sf(delta / se)))
        return Difference(
            delta,
            low,
            high,
            p,
            min(b.n, c.n),
            units,
            "two-proportion z, Newcombe interval (unpaired)",
            confidence,
            p_less,
            p_greater,
            se,
        )
    t_b, t_c = _t(confidence, max(b.units - 1, 1)), _t(confidence, max(c.units - 1, 1))
    se_b, se_c = (b.value - b.ci_low) / t_b, (c.value - c.ci_low) / t_c
    se = math.hypot(se_b, se_c)
    # Welch-Satterthwaite degrees of freedom
    df = se**4 / ((se_b**4 / max(b.units - 1, 1)) + (se_c**4 / max(c.units - 1, 1))) if se > 0 else 1.0
    low, high, p, p_less, p_greater = _t_test(delta, se, df, confidence)
    test = "Welch t on cluster means (unpaired)"
    if is_binary(base) and is_binary(cand):
        # 0/1 values on few clusters: Welch's p can fall far below what any relabelling of the clusters
        # allows (5 vs 5 trials: no exact test goes below 1/252), and is 0 when both sides have no spread
        vb, bc = _present(base, base_clusters)
        vc, cc = _present(cand, cand_clusters)
        (bs, bn), (cs, cn) = _cluster_sums(vb, bc), _cluster_sums(vc, cc)
        two, less, greater = cluster_permutation_ps(bs, bn, cs, cn)
        p = two if not math.isfinite(p) else max(p, two)
        p_less = less if not math.isfinite(p_less) else max(p_less, less)
        p_greater = greater if not math.isfinite(p_greater) else max(p_greater, greater)
        low, high = max(low, -1.0) if math.isfinite(low) else -1.0, min(high, 1.0) if math.isfinite(high) else 1.0
        test = "Welch t with cluster permutation p (unpaired)"
    return Difference(delta, low, high, p, min(b.n, c.n), units, test, confidence, p_less, p_greater, se)


# -- effective context length --------------------------------------------------------------------

RULER_THRESHOLD = 0.856  # RULER's: Llama-2-7B's mean accuracy at 4k


def parse_threshold(spec) -> tuple[str, float]:
    """``0.856`` -> ("abs", 0.856); ``rel:0.9`` -> ("rel", 0.9): 0.9 x the accuracy at the shortest length."""
    from evalkit.core.errors import ConfigError

    raw = str(spec).strip()
    kind, number = ("rel", raw[4:]) if raw.startswith("rel:") else ("abs", raw)
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not (0 < value <= 1):
        raise ConfigError(
            f"bad --threshold {raw!r}",
            "give an accuracy in (0, 1] like 0.856, or rel:F (0 < F <= 1) for F x the accuracy at the shortest length",
        )
    return kind, value


def threshold_level(spec, shortest_accuracy: float) -> float:
    """The accuracy level ``--threshold`` asks for, given the accuracy at the shortest tested length."""
    kind, value = parse_threshold(spec)
    return value * shortest_accuracy if kind == "rel" else value


def effective_length(lengths, scores, threshold: float) -> int | None:
    """RULER's effective context length: the longest tested length such that the score stays at
    or above the threshold at it and at every shorter tested length; None when even the shortest
    falls below."""
    best = None
    for length, score in sorted(zip(lengths, scores)):
        if not (score >= threshold):
            break
        best = int(length)
    return best


def effective_length_interval(lengths, ci_low, ci_high, threshold: float) -> tuple[int | None, int | None]:
    """(pessimistic, optimistic) effective length from the accuracy intervals' ends."""
    return effective_length(lengths, ci_low, threshold), effective_length(lengths, ci_high, threshold)


EFFECTIVE_LENGTH_COLUMNS = ("effective_length", "effective_length_ci_low", "effective_length_ci_high")


def effective_length_columns(per_length, score: str, threshold_spec) -> dict:
    """A variant's summary columns for RULER's effective length, from its per-length rows
    (``context_length``, ``score`` and its ``_ci_low``/``_ci_high`` columns): the threshold level
    (``--threshold``, absolute or relative to the shortest length), the length and its interval."""
    if per_length.empty:
        return {}
    level = threshold_level(threshold_spec, float(per_length[score].iloc[0]))
    lengths = per_length.context_length.astype(int)
    low, high = effective_length_interval(lengths, per_length[f"{score}_ci_low"], per_length[f"{score}_ci_high"], level)
    return dict(
        zip(
            ("threshold",) + EFFECTIVE_LENGTH_COLUMNS,
            (level, effective_length(lengths, per_length[score], level), low, high),
        )
    )


def lengths_as_integers(table):
    """Effective-length columns as nullable integers: a length, or empty where even the shortest
    length falls below the threshold."""
    for column in EFFECTIVE_LENGTH_COLUMNS:
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


# -- tables --------------------------------------------------------------------------------------


def weighted_mean(values, weights, clusters=None, confidence: float = CONFIDENCE) -> Estimate:
    """sum(w * x) / sum(w) with a cluster-robust t interval: the same ratio estimator as ``mean``,
    whose weights are the rows per cluster (a sliding-window perplexity weights windows by tokens)."""
    values, codes = _as_arrays(values, clusters)
    weights = np.asarray(weights, dtype=float)
    keep = ~(np.isnan(values) | np.isnan(weights))
    values, weights, codes = values[keep], weights[keep], np.unique(codes[keep], return_inverse=True)[1]
    n = len(values)
    if n == 0 or weights.sum() <= 0:
        return Estimate(math.nan, math.nan, math.nan, n, 0, "weighted t", confidence)
    sums, counts = _cluster_sums(values * weights, codes)
    counts = np.bincount(codes, weights, minlength=len(sums))
    centre = float(sums.sum() / counts.sum())
    se = _ratio_se(sums, counts)
    if not math.isfinite(se):
        return Estimate(centre, math.nan, math.nan, n, len(sums), "weighted t", confidence)
    half = _t(confidence, len(sums) - 1) * se
    return Estimate(centre, float(centre - half), float(centre + half), n, len(sums), "weighted t", confidence)


def mean_of_means(values, groups, clusters=None, confidence: float = CONFIDENCE) -> Estimate:
    """The unweighted average of the groups' means (RULER's average over tasks: each task counts
    once, whatever its sample count), with the cluster-robust t interval of ``weighted_mean``:
    each row weighs 1 / (rows in its group)."""
    import pandas as pd

    groups = pd.Series(np.asarray(groups, dtype=object))
    values = np.asarray(values, dtype=float)
    present = groups[~np.isnan(values)]
    weights = 1.0 / groups.map(present.value_counts()).to_numpy(dtype=float)
    return weighted_mean(values, weights, clusters, confidence)


def unit_keys(frame, columns):
    """One integer per row naming its independent unit (the rows of ``columns`` that agree), with
    ``seed`` on top when the rows carry it: two seeds never share a unit. No seed column is one seed."""
    columns = list(columns) + (["seed"] if "seed" in frame.columns and "seed" not in columns else [])
    if not columns:
        return np.arange(len(frame))
    return frame.groupby(columns, sort=False, dropna=False).ngroup().to_numpy()


KINDS = {"auto": estimate, "proportion": proportion, "mean": mean}


def estimates(frame, by, units, kind: str = "auto", value: str = "value", confidence: float = CONFIDENCE):
    """Per group of the ``by`` columns, the Estimate of ``value`` with the ``units`` columns (plus
    seed) as the independent unit: columns value, ci_low, ci_high, n, units, method."""
    import pandas as pd

    by = list(by)
    columns = by + ["value", "ci_low", "ci_high", "n", "units", "method"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    keys = unit_keys(frame, units)
    rows = []
    for group, index in frame.groupby(by, sort=False).indices.items():
        e = KINDS[kind](frame[value].to_numpy()[index], keys[index], confidence)
        group = group if isinstance(group, tuple) else (group,)
        rows.append((*group, e.value, e.ci_low, e.ci_high, e.n, e.units, e.method))
    return pd.DataFrame(rows, columns=columns)


def columns(e: Estimate, name: str) -> dict:
    """A summary table's columns for one estimate: name, name_ci_low, name_ci_high."""
    return {name: e.value, f"{name}_ci_low": e.ci_low, f"{name}_ci_high": e.ci_high}


def of_metric(metric, values, clusters=None, confidence: float = CONFIDENCE) -> Estimate:
    """The interval a declared metric (``evalkit.core.metrics.Metric``) calls for: Wilson for a binary
    one (and for a score whose values are all 0/1, as RULER's one-reference tasks), t otherwise, cut
    to the range its kind allows (a log-prob's interval never passes 0). None: decided from the
    values (``estimate``)."""
    if metric is None:
        return estimate(values, clusters, confidence)
    wilson_kind = metric.kind == "binary" or (metric.kind == "score" and is_binary(values))
    e = (proportion if wilson_kind else mean)(values, clusters, confidence)
    return clipped(e, *metric.range)


def clipped(e: Estimate, low: float = 0.0, high: float = 1.0) -> Estimate:
    """The estimate with its interval cut to the metric's range (a t interval over few units can
    pass 0 for a fraction that cannot)."""
    from dataclasses import replace

    return replace(e, ci_low=min(max(e.ci_low, low), high), ci_high=max(min(e.ci_high, high), low))


def compact(summary):
    """A summary for the terminal: each X, X_ci_low, X_ci_high folded into one 'X [low, high]' column;
    columns empty in every row (a metric that no shown task has) left out, but for the effective
    length, whose empty value says that even the shortest length is below the threshold; values a
    row has not (the threshold belongs to the "all" row only) shown as "-", never "nan"."""
    import pandas as pd

    from evalkit.report.render import effective_length_text

    empty = [c for c in summary.columns if summary[c].isna().all() and not c.startswith("effective_length")]
    table = summary.drop(columns=empty)
    if set(EFFECTIVE_LENGTH_COLUMNS) <= set(table.columns):  # on the pooled rows: "none" where no length passes
        pooled = table.context_length.astype(str) == "all" if "context_length" in table else [True] * len(table)
        table["effective_length"] = [
            effective_length_text(v, lo, hi) if is_pooled else "-"
            for v, lo, hi, is_pooled in zip(*(table[c] for c in EFFECTIVE_LENGTH_COLUMNS), pooled)
        ]
        table = table.drop(columns=list(EFFECTIVE_LENGTH_COLUMNS[1:]))
    for low in [c for c in summary.columns if c.endswith("_ci_low")]:
        name = low[: -len("_ci_low")]
        if name not in table or f"{name}_ci_high" not in table:
            continue
        table[name] = [
            _number(v) + ("" if pd.isna(v) or (pd.isna(lo) and pd.isna(hi)) else f" [{_number(lo)}, {_number(hi)}]")
            for v, lo, hi in zip(table[name], table[low], table[f"{name}_ci_high"])
        ]
        table = table.drop(columns=[low, f"{name}_ci_high"])
    for name in [c for c in table.columns if table[c].isna().any()]:
        # a value a row does not have (the threshold of one length, RULER's label on a per-task row) reads "-"
        number = table[name].dtype.kind == "f"
        table[name] = table[name].map(lambda v, number=number: _number(v) if number or pd.isna(v) else v)
    return table


def _number(v) -> str:
    import pandas as pd

    if pd.isna(v):
        return "-"
    return str(int(v)) if float(v).is_integer() and abs(v) >= 1 else f"{float(v):.4g}"


def ruler_weighted_average(
    values, tasks, lengths, clusters=None, increasing: bool = True, confidence: float = CONFIDENCE
) -> Estimate:
    """RULER's wAvg (inc / dec): the per-length averages over tasks weighted linearly by length rank, 1..N from
    the shortest length (inc) or N..1 (dec), with ``weighted_mean``'s cluster-robust interval: each row weighs
    its length's weight / (tasks at that length x rows of its task there)."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "value": np.asarray(values, dtype=float),
            "task": np.asarray(tasks, dtype=object),
            "length": np.asarray(lengths),
        }
    )
    frame = frame[~frame.value.isna()]
    order = sorted(frame.length.unique())
    rank = {n: (k + 1 if increasing else len(order) - k) for k, n in enumerate(order)}
    rows = frame.groupby(["task", "length"]).value.transform("size").to_numpy(dtype=float)
    per_length_tasks = frame.groupby("length").task.transform("nunique").to_numpy(dtype=float)
    weights = frame.length.map(rank).to_numpy(dtype=float) / (rows * per_length_tasks)
    codes = None if clusters is None else np.asarray(clusters, dtype=object)[~np.isnan(np.asarray(values, dtype=float))]
    return weighted_mean(frame.value.to_numpy(), weights, codes, confidence)
