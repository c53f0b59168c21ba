"""Many cells, one decision: family-wise error control and each cell's power, for compare and gate.

A compare decides on every judged cell at once (variant x length x metric). Testing each at 95%
makes pure noise fail a 20-cell compare about 40% of the time, so the regression tests are
one-sided (only "worse" fails) and their p-values are adjusted over the family:

- ``holm`` (default): Holm's step-down. When every cell is paired on units that the cells share
  (a needle trial is the same needle and haystack at every length; a perplexity window the same
  offset), the step-down's critical values come from the joint randomization distribution: one
  sign flip per unit, applied to that unit's difference in every cell at once (Westfall & Young's
  minP step-down). It controls the same family-wise error as Holm and never needs more evidence:
  a collapse seen consistently in 5 trials across 4 cells is 1/32 under the joint flips, where
  Holm's marginal floor would need 1/32 < 0.05 / 4. Otherwise (unpaired cells): Holm on the
  cells' own one-sided p-values.
- ``bonferroni``: p x m, single step.
- ``none``: the raw one-sided p-values (the old behaviour, for one planned cell).

Power: ``minimal_detectable`` is the smallest worsening a cell could call beyond noise with
probability ``power`` at its share of the family's error (alpha / m, the first Holm step), from
its standard error with a floor that treats the units as the sample; and ``p_floor`` is the
smallest p its test can reach at all (an exact sign-flip test on k units cannot go below 1/2^k).
"""

from __future__ import annotations

import math

import numpy as np

CORRECTIONS = ("holm", "bonferroni", "none")
JOINT_FLIPS = 20000  # random joint sign flips when 2^units is larger; the identity is counted in
EXACT_UNITS = 16


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    present = np.flatnonzero(np.isfinite(p))
    m = len(present)
    if not m:
        return out
    order = present[np.argsort(p[present], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def bonferroni(p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.minimum(p * np.isfinite(p).sum(), 1.0)


def joint_flips(units: int, seed: int = 0) -> np.ndarray:
    """(B, units) of +-1: every pattern when 2^units <= 2^16, else the identity and JOINT_FLIPS random ones."""
    if units <= EXACT_UNITS:
        return 1 - 2 * ((np.arange(2**units)[:, None] >> np.arange(units)) & 1)
    rng = np.random.default_rng(seed)
    return np.vstack([np.ones((1, units), dtype=int), rng.choice([-1, 1], size=(JOINT_FLIPS, units))])


def joint_step_down(worse_sums: np.ndarray, counts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Westfall-Young minP step-down over cells paired on shared units.

    worse_sums: (units, cells), each unit's summed candidate - baseline difference oriented so that
    positive is worse (0 where a unit is not in a cell); counts: (units, cells) rows behind it.
    Returns (raw one-sided p per cell under the joint sign flips, family-adjusted p per cell).
    """
    flips = joint_flips(worse_sums.shape[0], seed).astype(float)  # (B, U)
    null = flips @ worse_sums / np.maximum(counts.sum(axis=0), 1.0)  # (B, C): each cell's mean worsening
    observed = worse_sums.sum(axis=0) / np.maximum(counts.sum(axis=0), 1.0)
    eps = 1e-12 * np.maximum(1.0, np.abs(null).max(axis=0))
    b, cells = null.shape
    ordered = np.sort(null, axis=0)
    # p of every flip's statistic within its own cell's null distribution: share of flips at least as large
    p_null = np.empty_like(null)
    for c in range(cells):
        p_null[:, c] = (b - np.searchsorted(ordered[:, c], null[:, c] - eps[c], side="left")) / b
    raw = (b - np.array([np.searchsorted(ordered[:, c], observed[c] - eps[c], side="left") for c in range(cells)])) / b
    order = np.argsort(raw, kind="stable")
    successive = np.minimum.accumulate(p_null[:, order[::-1]], axis=1)[:, ::-1]  # (B, C): min over cells from step j on
    q = (successive <= raw[order][None, :] + 1e-12).mean(axis=0)
    adjusted = np.empty(cells)
    adjusted[order] = np.minimum(np.maximum.accumulate(q), 1.0)
    return raw, adjusted


def adjust(
    p_worse: np.ndarray, correction: str, unit_data: list | None = None, floors=None, alpha: float = 0.05
) -> tuple[np.ndarray, str]:
    """Family-adjusted one-sided p-values and the name of the procedure used.

    unit_data: per cell, None (unpaired) or (unit ids, oriented per-unit sums, per-unit counts);
    floors: per cell, the smallest p its own test can reach. Holm's joint form is chosen from the
    design alone, never from the p-values: when some cell's exact floor keeps marginal Holm from
    ever reaching alpha / m while the joint flips of the shared units can reach alpha.
    """
    from evalkit.core.errors import ConfigError

    if correction not in CORRECTIONS:
        raise ConfigError(f"bad --correction {correction!r}", f"use one of {', '.join(CORRECTIONS)}")
    p_worse = np.asarray(p_worse, dtype=float)
    m = int(np.isfinite(p_worse).sum())
    if correction == "none" or m <= 1:
        name = "none" if correction == "none" else f"{correction} over {m} cell{'s' * (m != 1)}"
        return p_worse.copy(), name
    if correction == "bonferroni":
        return bonferroni(p_worse), f"Bonferroni over {m} cells"
    present = [k for k in range(len(p_worse)) if np.isfinite(p_worse[k])]
    units = (
        sorted({u for k in present for u in unit_data[k][0]})
        if unit_data is not None and all(unit_data[k] is not None for k in present)
        else []
    )
    blocked = floors is not None and max(np.asarray(floors, dtype=float)[present]) >= alpha / m
    if units and blocked and (len(units) > EXACT_UNITS or 0.5 ** len(units) < alpha):
        index = {u: i for i, u in enumerate(units)}
        sums, counts = np.zeros((len(units), len(present))), np.zeros((len(units), len(present)))
        for j, k in enumerate(present):
            ids, s, n = unit_data[k]
            rows = [index[u] for u in ids]
            sums[rows, j], counts[rows, j] = s, n
        raw, adjusted = joint_step_down(sums, counts)
        out = np.full_like(p_worse, np.nan)
        # never below the cell's own test (its t or exact p): the adjustment only ever adds evidence needed
        out[present] = np.maximum(adjusted, p_worse[present])
        kind = "exact" if len(units) <= EXACT_UNITS else f"{JOINT_FLIPS} random"
        return (
            out,
            f"Holm step-down over {m} cells, joint sign flips of {len(units)} shared units ({kind}; Westfall-Young)",
        )
    return holm(p_worse), f"Holm over {m} cells"


# -- power ----------------------------------------------------------------------------------------


def sign_flip_floor(units: int) -> float:
    """The smallest one-sided p an exact sign-flip (or McNemar) test on ``units`` units can give."""
    return 0.5**units


def minimal_detectable(se: float, units: int, level: float, power: float = 0.8) -> float:
    """Smallest true worsening detected with probability ``power`` by a one-sided test at ``level``
    with standard error ``se`` on ``units`` units (t quantiles, units - 1 degrees of freedom)."""
    from scipy.stats import t

    if not (math.isfinite(se) and units >= 2 and se >= 0):
        return math.nan
    df = units - 1
    return float((t.ppf(1 - level, df) + t.ppf(power, df)) * se)


def binary_unit_sd(p: float, detect: float = 0.0, units: int | None = None) -> float:
    """Planning spread of one unit's paired accuracy difference when the units (trials) are the
    sample: each side's unit mean varies like one Bernoulli draw at the accuracy midway through the
    drop, the two sides independently (no credit for pairing). With ``units``, the accuracy is kept
    half a unit away from 0 and 1, so a cell at 100% still has a spread to plan with."""
    mid = min(max(p - detect / 2, 0.0), 1.0)
    if units is not None:
        edge = 0.5 / (units + 1)
        mid = min(max(mid, edge), 1 - edge)
    return math.sqrt(2 * mid * (1 - mid))


def units_needed(
    sd_difference: float, detect: float, level: float, power: float = 0.8, binary: bool = True, most: int = 100000
) -> int | None:
    """Fewest units k with minimal_detectable(sd / sqrt(k), k) <= detect and, for exact 0/1 tests,
    2^-k < level; None when even ``most`` would not do."""
    from scipy.stats import t

    k = 2
    while k <= most:
        mdd = (t.ppf(1 - level, k - 1) + t.ppf(power, k - 1)) * sd_difference / math.sqrt(k)
        if mdd <= detect and (not binary or sign_flip_floor(k) < level):
            return k
        k = k + 1 if k < 64 else int(k * 1.05) + 1
    return None
