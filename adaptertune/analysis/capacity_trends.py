"""Model-free trend tests of a rank sweep: does accuracy rise, with diminishing returns, or fall?

monotone_p (Page's L test, seeds as blocks; Kendall's tau when seeds do not cover every rank),
diminishing_p (one-sided t-test that the quadratic term in log2(rank) is negative, seed fixed
effects), decline_p (one-sided t-test that accuracy falls over the upper half of the ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True, eq=False)
class Trends:
    """One-sided p-values on the raw points (None where the data cannot support the test)."""

    monotone_p: float | None      # accuracy increases with rank
    monotone_test: str            # "page" (seeds as blocks) or "kendall"
    diminishing_p: float | None   # the gain per doubling falls (negative quadratic term in log2 r)
    decline_p: float | None       # accuracy falls over the upper half of the ranks

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _ols_one_sided(X: np.ndarray, y: np.ndarray, j: int) -> float | None:
    """P(T <= t) for coefficient j of the OLS fit y ~ X (negative alternative); X (n, k), y (n,)."""
    n, k = X.shape
    if np.linalg.matrix_rank(X) < k or n - k < 1:
        return None
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    s2 = resid @ resid / (n - k)
    if s2 <= 1e-20 * max(1.0, float(y @ y) / n):
        return None                      # an exact fit: no scatter to test against
    se = math.sqrt(s2 * np.linalg.inv(X.T @ X)[j, j])
    return float(stats.t.cdf(beta[j] / se, n - k))


def _seed_effects(seeds: np.ndarray) -> np.ndarray:
    """Intercept plus dummies for all but the first seed: (n, n_seeds)."""
    levels = np.unique(seeds)
    return np.column_stack([np.ones(seeds.size)] + [(seeds == s).astype(float) for s in levels[1:]])


def trend_tests(ranks: np.ndarray, seeds: np.ndarray, acc: np.ndarray) -> Trends:
    """Statistical tests for the sweep's shape; ranks, seeds, acc (n,) points."""
    ranks, seeds, acc = np.asarray(ranks, float), np.asarray(seeds), np.asarray(acc, float)
    levels, seed_levels = np.unique(ranks), np.unique(seeds)
    table = np.full((seed_levels.size, levels.size), np.nan)
    for s_i, s in enumerate(seed_levels):
        for r_i, r in enumerate(levels):
            hit = acc[(seeds == s) & (ranks == r)]
            if hit.size == 1:
                table[s_i, r_i] = hit[0]
    if seed_levels.size >= 2 and levels.size >= 3 and not np.isnan(table).any():
        monotone_p, test = float(stats.page_trend_test(table).pvalue), "page"
    else:
        res = stats.kendalltau(ranks, acc, alternative="greater")
        monotone_p = None if np.isnan(res.pvalue) else float(res.pvalue)
        test = "kendall"
    x = np.log2(ranks)
    x = x - x.mean()
    S = _seed_effects(seeds)
    diminishing_p = _ols_one_sided(np.column_stack([S, x, x ** 2]), acc, S.shape[1] + 1) \
        if levels.size >= 3 else None
    upper = ranks >= np.median(levels)
    decline_p = None
    if np.unique(ranks[upper]).size >= 2:
        S = _seed_effects(seeds[upper])
        decline_p = _ols_one_sided(np.column_stack([S, x[upper]]), acc[upper], S.shape[1])
    return Trends(monotone_p, test, diminishing_p, decline_p)


