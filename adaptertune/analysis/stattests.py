"""Tests on one comparison of two methods' seed values: exact permutation tests (sign-flip, two-sample),
Hedges' g, multiple-comparison corrections, and `compare`, which gathers them into a `Comparison`.

Honest power: each test states the smallest p-value it can attain with this many seeds; `verdict` calls a
result whose best attainable p exceeds alpha "inconclusive (underpowered)", never "not significant".
Imports no torch and no plotting.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from scipy import stats

TESTS = ("perm", "t")  # the test behind verdicts: exact permutation (default) or t-test
CORRECTIONS = ("holm", "fdr_bh", "bonferroni", "none")
UNDERPOWERED = "inconclusive (underpowered)"
TEST_NAMES = {"perm": "permutation test", "t": "t-test"}  # sign-flip (paired) or two-sample; exact up to 16 units


# -- tests on one comparison -----------------------------------------------------------------------

def sign_flip_test(d, alternative: str = "two-sided", *, rng: np.random.Generator | None = None,
                   max_exact: int = 16, n_resamples: int = 20_000) -> tuple[float, float]:
    """Paired permutation test of mean(d) = 0 by flipping the signs of the differences.

    d: (n,) paired differences. Exact over all 2**n sign vectors when n <= max_exact, otherwise
    Monte Carlo with `rng`. Returns (p, min_p): min_p is the smallest p-value attainable with n
    differences (two-sided 2 / 2**n, one-sided 1 / 2**n: 0.25 and 0.125 at n = 3).
    """
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        return 1.0, 1.0
    obs = d.sum()
    if n <= max_exact:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # (2**n, n)
        null = signs @ d
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        null = np.concatenate([[obs], rng.choice([-1.0, 1.0], size=(n_resamples, n)) @ d])
    p = _perm_p(null, obs, alternative, tol=1e-9 * max(1.0, np.abs(d).sum()))
    min_p = (2.0 if alternative == "two-sided" else 1.0) / min(2.0 ** n, null.size)
    return p, float(min(1.0, min_p))


def permutation_test_2samp(x, y, alternative: str = "two-sided", *, rng: np.random.Generator | None = None,
                           max_exact: int = 20_000, n_resamples: int = 20_000) -> tuple[float, float]:
    """Two-sample permutation test of mean(x) - mean(y) = 0 (exact when C(n_x + n_y, n_x) <= max_exact).

    x: (n_x,), y: (n_y,). Returns (p, min_p) as `sign_flip_test` (min_p: 1 or 2 over the number of splits).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    pooled, na, nb = np.concatenate([x, y]), x.size, y.size
    total = math.comb(na + nb, na)
    if total <= max_exact:
        idx = np.array(list(combinations(range(na + nb), na)))  # (total, na)
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        idx = rng.permuted(np.tile(np.arange(na + nb), (n_resamples, 1)), axis=1)[:, :na]
    sum_a = pooled[idx].sum(axis=1)
    null = sum_a / na - (pooled.sum() - sum_a) / nb
    obs = x.mean() - y.mean()
    if total > max_exact:  # Monte Carlo: the observed split counts as one of the resamples
        null = np.concatenate([[obs], null])
    p = _perm_p(null, obs, alternative, tol=1e-9 * max(1.0, np.abs(pooled).sum()))
    min_p = (2.0 if alternative == "two-sided" else 1.0) / min(total, null.size)
    return p, float(min(1.0, min_p))


def _perm_p(null: np.ndarray, obs: float, alternative: str, tol: float) -> float:
    """p-value of `obs` against a null distribution (R,); two-sided is twice the smaller tail, as in
    scipy.stats.permutation_test (the same as P(|T| >= |t|) when the null is symmetric)."""
    greater, less = np.mean(null >= obs - tol), np.mean(null <= obs + tol)
    if alternative == "two-sided":
        return float(min(1.0, 2 * min(greater, less)))
    if alternative in ("greater", "less"):
        return float(greater if alternative == "greater" else less)
    raise ValueError(f"alternative {alternative!r}")


def hedges_g(x, y) -> float | None:
    """Hedges' g of x (n_x,) vs y (n_y,): (mean x - mean y) / pooled SD, times the exact small-sample
    correction J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)), df = n_x + n_y - 2. None if undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    df = x.size + y.size - 2
    if x.size < 2 or y.size < 2:
        return None
    sp = math.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / df)
    if sp == 0:
        return None
    j = math.exp(math.lgamma(df / 2) - math.lgamma((df - 1) / 2)) / math.sqrt(df / 2)
    return float(j * (x.mean() - y.mean()) / sp)


def adjust(pvalues, method: str = "holm") -> np.ndarray:
    """Adjusted p-values (m,) for raw p-values (m,): statsmodels' multipletests, method explicit."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0 or method == "none":
        return p.copy()
    from statsmodels.stats.multitest import multipletests

    return multipletests(p, method=method)[1]


def best_adjusted(min_p: float, n_tests: int, method: str) -> float:
    """The smallest adjusted p-value a test with attainable minimum `min_p` can reach in a family of
    n_tests: m * min_p for Holm/Bonferroni (it is the family's smallest), min_p for BH or none."""
    if method in ("holm", "bonferroni"):
        return min(1.0, n_tests * min_p)
    return min_p


def t_pvalue(result) -> float:
    """A t-test's p-value; NaN (zero variance and zero mean difference: no evidence) becomes 1."""
    p = float(result.pvalue)
    return 1.0 if math.isnan(p) else p


@dataclass(frozen=True)
class Comparison:
    """Method a vs method b on one (dataset, backbone) pair; differences are a - b."""
    dataset: str
    backbone: str
    a: str
    b: str
    n: int                      # seeds (paired) or min(n_a, n_b) (unpaired)
    paired: bool
    seeds: tuple
    alternative: str
    mean_a: float
    mean_b: float
    mean_diff: float
    ci: tuple | None            # percentile bootstrap of the mean difference, at `level`
    ci_t: tuple | None          # t interval (paired t or Welch), at `level`
    p_t: float | None           # paired t-test, or Welch when unpaired
    p_perm: float               # exact sign-flip (paired) or two-sample permutation (unpaired)
    p_wilcoxon: float | None    # signed-rank (paired, >= 2 non-zero differences) or rank-sum
    hedges_g: float | None
    test: str                   # which of p_perm / p_t the verdict uses
    p: float
    min_p: float                # smallest p the verdict's test can attain with these seeds
    min_p_by_test: dict = field(default_factory=dict)  # {"perm", "wilcoxon", "t"}: each test's smallest p
    p_adj: float | None = None
    verdict: str = ""

    @property
    def pair(self) -> str:
        return f"{self.dataset}/{self.backbone}"

    def to_dict(self) -> dict:
        return asdict(self)


def compare(x, y, *, paired: bool, alternative: str = "two-sided", test: str = "perm",
            rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95,
            dataset: str = "", backbone: str = "", a: str = "a", b: str = "b", seeds=(),
            detail: bool = True) -> Comparison:
    """All statistics of a vs b from x (n_a,) and y (n_b,) metric values (paired: same seed order).

    detail=False skips what no verdict uses (Wilcoxon, the bootstrap interval): for claims and simulations."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if paired and x.size != y.size:
        raise ValueError("paired comparison needs equal sizes")
    q = ((1 - level) / 2, 1 - (1 - level) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            d = x - y
            n = d.size
            p_perm, min_perm = sign_flip_test(d, alternative, rng=rng)
            p_t = t_pvalue(stats.ttest_rel(x, y, alternative=alternative)) if n >= 2 else None
            nz = int(np.count_nonzero(d))
            p_w = float(stats.wilcoxon(d, alternative=alternative).pvalue) if nz >= 2 and detail else None
            boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n >= 2 and detail else None
            se, df = (d.std(ddof=1) / math.sqrt(n), n - 1) if n >= 2 else (None, None)
        else:
            n = min(x.size, y.size)
            p_perm, min_perm = permutation_test_2samp(x, y, alternative, rng=rng)
            ok = x.size >= 2 and y.size >= 2
            p_t = t_pvalue(stats.ttest_ind(x, y, equal_var=False, alternative=alternative)) if ok else None
            p_w = float(stats.mannwhitneyu(x, y, alternative=alternative).pvalue) if detail else None
            boot = (x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
                    - y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)) if ok and detail else None
            if ok:
                va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
                se = math.sqrt(va + vb)
                df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1)) if se > 0 else 1.0
            else:
                se, df = None, None
    diff = float(x.mean() - y.mean())
    ci = tuple(float(v) for v in np.quantile(boot, q)) if boot is not None else None
    ci_t = None
    if se is not None:
        half = float(stats.t.ppf(q[1], df) * se)
        ci_t = (diff - half, diff + half)
    if test == "perm":
        p, min_p = p_perm, min_perm
    else:
        p, min_p = (p_t if p_t is not None else 1.0), (0.0 if p_t is not None else 1.0)
    mins = {"perm": min_perm, "wilcoxon": min_perm if p_w is not None else None,  # exact: same combinatorics
            "t": 0.0 if p_t is not None else None}
    return Comparison(dataset, backbone, a, b, int(n), bool(paired), tuple(seeds), alternative,
                      float(x.mean()), float(y.mean()), diff, ci, ci_t, p_t, p_perm, p_w,
                      hedges_g(x, y), test, float(p), float(min_p), mins)


def verdict(p_adj: float, best_p: float, alpha: float) -> str:
    """"significant" / "not significant", or UNDERPOWERED when even the best attainable p > alpha."""
    if best_p > alpha:
        return UNDERPOWERED
    return "significant" if p_adj <= alpha else "not significant"
