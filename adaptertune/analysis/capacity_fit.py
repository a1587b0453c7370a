"""The capacity model fitted to one rank sweep: model families, constrained least squares, bootstrap
intervals, elbow, Kneedle and trend tests (no run directories, no files; `capacity.py` is the command).

The theory (analysis/theory.py) says accuracy(r) = 100 - e_inf - a*tau(r)/tau(0) - b*p(r)/n: it rises
with rank while the approximation term dominates and saturates as the spectrum's tail flattens.
Three families describe a measured sweep, every point (rank, seed, accuracy) a replicate:

    power      A - B r^-alpha             saturating power law (power-law spectrum, alpha = gamma - 1)
    exp        A - B exp(-r/rho)          exponential saturation
    flat       A - B max(0, 1 - r/kappa)  a shift of kappa equal directions (flat spectrum of finite
                                          rank, tau(r)/tau(0) = 1 - r/kappa): the rise stops at kappa
    spectral   A - a T(r) - b r           T = tau/tau(0) from a measured spectrum: the shape is fixed by
                                          the spectrum; a = approximation weight, b = estimation cost per
                                          rank (the theory's b * L (2d+1) / n)

All are linear in their coefficients (A, B | A, a, b, constrained B, a, b >= 0) given at most one
nonlinear parameter (alpha, rho, kappa), so a fit is a grid over that parameter with constrained least
squares at each point, refined by one parabolic step - vectorised over bootstrap replicates.

Intervals (95%) come from a residual bootstrap by default: the deviations of every run from the
fitted curve (the seed replicates' scatter, pooled over ranks, rescaled by sqrt(n/(n-q)) for the q
fitted parameters) are resampled onto the fitted curve and the model refitted; percentiles are
expanded to Student-t width (`expanded_tail`). Why not resample seeds: with the usual 3 seeds a
seed bootstrap has 10 distinct resamples and shrinks the variance by 2/3 - its 95% intervals
covered the truth ~75% of the time in simulation (~90% even with 10 seeds), against ~95% for
the residual bootstrap (tests/test_capacity.py). The price is an assumption: run-to-run noise is exchangeable across ranks
(no seed effect shared by all ranks of a seed). `interval="seeds"` resamples whole seeds for many
seeds and correlated noise. The best family is chosen by AICc; the elbow's interval carries the
uncertainty of that choice (`selection_bootstrap`: the family is chosen again in every replicate,
and how often each was chosen is reported), parameter intervals are given the family.

The elbow is the smallest rank from which every further doubling is predicted to gain less than
delta points, searched from the smallest measured rank to `horizon` x the largest (inf: not reached);
beside it, Kneedle (Satopaa et al. 2011) on the fitted curve over log2(rank) (none when the curve
rises less than delta over the measured ranks; being scale-free, it finds a knee in any concave
curve, so read it beside diminishing_p). Trend tests:
monotone_p (Page's L test, seeds as blocks; Kendall's tau when seeds do not cover every rank),
diminishing_p (one-sided t-test that the quadratic term in log2(rank) is negative, seed fixed
effects), decline_p (one-sided t-test that accuracy falls over the upper half of the ranks).
Every fit also gets a lack-of-fit F-test against the rank means (the seeds' scatter as pure error),
and the same doubling rule is applied to the measured means without a curve (`elbow_means`): when
the best curve is rejected the two can disagree, and a note says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..errors import UserError
from ..runs import _plain as plain   # JSON-safe: arrays to lists, NaN/inf to None

FAMILIES = ("power", "exp", "flat", "spectral")
DELTA = 0.5          # points a doubling must gain to be worth it
HORIZON = 8.0        # the elbow is searched up to HORIZON x the largest measured rank
LEVEL = 0.95
ALPHA_TEST = 0.05    # significance level behind the notes
_GRID = 160          # nonlinear-parameter grid points
_CURVE = 200         # rank grid points for elbows, Kneedle and figures
_CHUNK = 256         # responses fitted together


# -- model families ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Family:
    """A model acc(r) = X(r; phi) @ beta: linear coefficients beta, at most one nonlinear phi.

    `names` lists the parameters in the order of a parameter vector theta: the linear ones, then phi.
    `nonneg` flags the linear coefficients constrained to be >= 0. `grid` (G,) holds phi's search grid
    (empty when there is no phi). `tail` (m+1,) is tau(0..m) for the spectral family. Column 0 of
    every design is the free intercept A (the least-squares solver relies on it).
    """

    name: str
    names: tuple[str, ...]
    nonneg: tuple[bool, ...]
    grid: np.ndarray = field(default_factory=lambda: np.empty(0))
    tail: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        return len(self.names)

    def columns(self, r: np.ndarray, phi=None) -> list[np.ndarray]:
        """The non-intercept columns: r (n,), phi scalar or (m,) -> q_lin - 1 arrays (m or 1, n)."""
        r = np.asarray(r, float)[None, :]
        phi = np.reshape(np.asarray(1.0 if phi is None else phi, float), (-1, 1))
        if self.name == "power":
            return [-(r ** -phi)]
        if self.name == "exp":
            return [-np.exp(-r / phi)]
        if self.name == "flat":
            return [-np.maximum(0.0, 1.0 - r / phi)]
        return [-normalized_tail(self.tail, r), -r]

    def design(self, r: np.ndarray, phi=None) -> np.ndarray:
        """Design matrices [1, columns]: r (n,), phi scalar or (m,) -> (m, n, q_lin) (m = 1 for a scalar)."""
        cols = self.columns(r, phi)
        shape = np.broadcast_shapes(*(c.shape for c in cols))
        return np.stack([np.ones(shape)] + [np.broadcast_to(c, shape) for c in cols], axis=-1)

    def predict(self, theta: np.ndarray, r: np.ndarray) -> np.ndarray:
        """theta (q,) or (m, q), r (G,) -> predictions (G,) or (m, G)."""
        th = np.atleast_2d(np.asarray(theta, float))
        q_lin = len(self.nonneg)
        cols = self.columns(r, th[:, q_lin] if self.grid.size else None)
        out = th[:, :1] + sum(th[:, j + 1:j + 2] * c for j, c in enumerate(cols))
        return out[0] if np.ndim(theta) == 1 else out


def normalized_tail(tail: np.ndarray, r) -> np.ndarray:
    """T(r) = tau(r)/tau(0), linear between integer ranks, 0 past the spectrum. tail (m+1,); r any shape."""
    tail = np.asarray(tail, float)
    t = tail / tail[0]
    return np.interp(np.asarray(r, float), np.arange(t.size), t, right=0.0)


def make_family(name: str, ranks: np.ndarray, tail: np.ndarray | None = None) -> Family:
    """The family `name` for a sweep over `ranks` (n,); `tail` (m+1,) tau(0..m) for "spectral"."""
    ranks = np.asarray(ranks, float)
    if name == "power":
        return Family("power", ("A", "B", "alpha"), (False, True), np.geomspace(0.01, 5.0, _GRID))
    if name == "exp":
        lo, hi = ranks.min() / 10, ranks.max() * 10
        return Family("exp", ("A", "B", "rho"), (False, True), np.geomspace(lo, hi, _GRID))
    if name == "flat":
        return Family("flat", ("A", "B", "kappa"), (False, True), np.geomspace(ranks.min(), ranks.max() * 10, _GRID))
    if name == "spectral":
        tail = check_tail(tail)
        return Family("spectral", ("A", "a", "b"), (False, True, True), tail=tail)
    raise UserError(f"unknown capacity model {name!r}: choose from {', '.join(FAMILIES)}")


def check_tail(tail) -> np.ndarray:
    """Validate a tail-energy array tau(0..m) (m+1,): finite, non-negative, non-increasing, tau(0) > 0."""
    if tail is None:
        raise UserError("the spectral model needs a tail energy tau(r) (from a measured spectrum)")
    tail = np.asarray(tail, float).ravel()
    if tail.size < 2 or not np.all(np.isfinite(tail)) or tail[0] <= 0 or np.any(tail < 0) \
            or np.any(np.diff(tail) > 1e-9 * tail[0]):
        raise UserError("tail energy must be tau(0..m): finite, >= 0, non-increasing, tau(0) > 0")
    return tail


# -- vectorised constrained least squares -------------------------------------------------------------
#
# Every family's first column is a free intercept, so a fit centres the data and solves for the
# other k <= 2 coefficients from weighted sums ("moments"): with one design shared by many responses
# these are a few matrix products, which is what makes thousands of bootstrap refits cheap.

def _moments(Z: np.ndarray, Y: np.ndarray, W: np.ndarray | None, shared: bool):
    """Centred cross-products of the non-intercept columns Z and the responses Y.

    Z: (G, n, k) one design per grid point, shared by all rows of Y (shared=True), or (m, n, k) one
    per row. Y, W: (m, n). Returns my, mz, czz, czy, cyy: weighted means of y (m,) and of each
    column (k arrays), centred z_a'z_b ([k][k] arrays), z_a'y (k arrays) and y'y; the arrays have
    shape (G, m) when shared, else (m,) (or broadcast to it).
    """
    Wt = np.ones_like(Y) if W is None else W
    WY = Wt * Y
    sw, sy = Wt.sum(-1), WY.sum(-1)
    my = sy / sw
    k = Z.shape[-1]
    cols = [np.ascontiguousarray(Z[..., a]) for a in range(k)]             # (G, n) or (m, n)
    if shared:
        dot = lambda u, v: np.einsum("gn,mn->gm", u, v)   # noqa: E731  not BLAS: its threads stall on small products
    else:
        dot = lambda u, v: (u * v).sum(-1)                                   # noqa: E731  row by row
    sz = [dot(z, Wt) for z in cols]
    mz = [s / sw for s in sz]
    czy = [dot(z, WY) - s * my for z, s in zip(cols, sz)]
    czz = [[dot(cols[a] * cols[b], Wt) - sz[a] * mz[b] for b in range(k)] for a in range(k)]
    cyy = (WY * Y).sum(-1) - sy * my
    return my, mz, czz, czy, cyy


def _lsq(X: np.ndarray, Y: np.ndarray, nonneg: tuple[bool, ...], W: np.ndarray | None = None,
         shared: bool = True):
    """Weighted least squares with beta[j] >= 0 where nonneg[j]; column 0 of X is the free intercept.

    X: (G, n, q) shared by all responses (shared=True) or (m, n, q) one per response; Y, W: (m, n).
    Returns beta (L + (q,)) and rss (L), L = (G, m) or (m,). Every subset of the constrained
    coefficients is tried at zero; the best feasible solution is the constrained optimum (q <= 3).
    """
    my, mz, czz, czy, cyy = _moments(X[..., 1:], Y, W, shared)
    k = X.shape[-1] - 1
    shape = np.broadcast_shapes(*(c.shape for c in czy), np.shape(cyy))
    scale = 1.0 + max(float(np.abs(czz[a][a]).max()) for a in range(k))
    best = [np.zeros(shape) for _ in range(k)]
    best_rss = np.broadcast_to(cyy, shape).copy()                          # all slopes 0: the mean
    free = {j for j in range(k) if not nonneg[j + 1]}
    for size in range(1, k + 1):
        for keep in itertools.combinations(range(k), size):
            if not free <= set(keep):
                continue
            b = [np.zeros(shape) for _ in range(k)]
            if size == 1:
                (j,) = keep
                ok = czz[j][j] > 1e-12 * scale
                b[j] = czy[j] / np.where(ok, czz[j][j], 1.0)
            else:                                                            # k = 2: Cramer's rule
                det = czz[0][0] * czz[1][1] - czz[0][1] * czz[1][0]
                ok = det > 1e-12 * scale ** 2
                d = np.where(ok, det, 1.0)
                b[0] = (czz[1][1] * czy[0] - czz[0][1] * czy[1]) / d
                b[1] = (czz[0][0] * czy[1] - czz[1][0] * czy[0]) / d
            rss = cyy - sum(bj * cj for bj, cj in zip(b, czy))
            for j in range(k):
                if nonneg[j + 1]:
                    ok = ok & (b[j] >= 0)
            ok = ok & (rss < best_rss)
            best = [np.where(ok, bj, old) for bj, old in zip(b, best)]
            best_rss = np.where(ok, rss, best_rss)
    intercept = my - sum(bj * m for bj, m in zip(best, mz))
    return np.stack([np.broadcast_to(intercept, shape), *best], -1), np.maximum(best_rss, 0.0)


def fit_many(family: Family, r: np.ndarray, Y: np.ndarray, W: np.ndarray | None = None):
    """Least-squares fits of `family` to many response vectors at once.

    r (n,), Y (m, n), W (m, n) replicate weights or None -> theta (m, q), rss (m,).
    """
    r, Y = np.asarray(r, float), np.atleast_2d(np.asarray(Y, float))
    if not family.grid.size:
        beta, rss = _lsq(family.design(r), Y, family.nonneg, W)
        return beta[0], rss[0]
    if Y.shape[0] > _CHUNK:                                     # keep the (G, m) work arrays in cache
        parts = [fit_many(family, r, Y[i:i + _CHUNK], None if W is None else W[i:i + _CHUNK])
                 for i in range(0, Y.shape[0], _CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    grid, m = family.grid, Y.shape[0]
    rss = _lsq(family.design(r, grid), Y, family.nonneg, W)[1]               # (G, m)
    g = rss.argmin(0)
    i = np.clip(g, 1, grid.size - 2)
    cols = np.arange(m)
    r0, r1, r2 = rss[i - 1, cols], rss[i, cols], rss[i + 1, cols]
    h = np.log(grid[1] / grid[0])
    curv = r0 - 2 * r1 + r2
    step = np.where(curv > 0, 0.5 * h * (r0 - r2) / np.where(curv > 0, curv, 1.0), 0.0)
    theta, out_rss = np.empty((m, family.n_params)), np.full(m, np.inf)
    for phi in (grid[g], grid[i] * np.exp(np.clip(step, -h, h))):   # the grid's best, a parabolic step
        beta, res = _lsq(family.design(r, phi), Y, family.nonneg, W, shared=False)
        better = res < out_rss
        theta[better, :-1], theta[better, -1], out_rss[better] = beta[better], phi[better], res[better]
    return theta, out_rss


# -- elbow and Kneedle ---------------------------------------------------------------------------------

def rank_grid(lo: float, hi: float, size: int = _CURVE) -> np.ndarray:
    """Ranks evenly spaced in log2 between lo and hi: (size,)."""
    return np.geomspace(lo, hi, size)


def _last_true(mask: np.ndarray) -> np.ndarray:
    """Index of the last True in each row of a (m, G) mask; -1 where a row has none."""
    return np.where(mask.any(1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], 1), -1)


def doubling_elbow(family: Family, theta: np.ndarray, delta: float, lo: float, hi: float) -> np.ndarray:
    """Smallest rank r in [lo, hi] from which every doubling gains < delta: f(2r') - f(r') < delta, r' >= r.

    theta (q,) or (m, q) -> float or (m,); `lo` when even the first doubling gains less than delta,
    inf when a doubling still gains delta at `hi`. Linear interpolation in log r at the crossing.
    """
    th = np.atleast_2d(theta)
    rg = rank_grid(lo, hi)
    gain = family.predict(th, 2 * rg) - family.predict(th, rg)            # (m, G)
    last = _last_true(gain >= delta)
    out = np.full(th.shape[0], float(lo))
    inside = (last >= 0) & (last < rg.size - 1)
    j, rows = last[inside], np.nonzero(inside)[0]
    g0, g1 = gain[rows, j], gain[rows, j + 1]
    frac = np.clip((g0 - delta) / np.where(g0 > g1, g0 - g1, 1.0), 0, 1)
    out[rows] = np.exp(np.log(rg[j]) + frac * np.log(rg[j + 1] / rg[j]))
    out[last == rg.size - 1] = np.inf
    return out[0] if np.ndim(theta) == 1 else out


def kneedle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kneedle knee of increasing concave curves: x (G,), y (G,) or (m, G) -> x at the knee, (m,) or scalar.

    Both axes are scaled to [0, 1]; the knee maximises y_n - x_n. NaN when a curve does not rise
    (y[-1] <= y[0]) or is nowhere above its chord (no knee).
    """
    x, Y = np.asarray(x, float), np.atleast_2d(np.asarray(y, float))
    lo, hi = Y.min(1, keepdims=True), Y.max(1, keepdims=True)
    span = hi - lo
    yn = (Y - lo) / np.where(span > 0, span, 1.0)
    xn = (x - x[0]) / (x[-1] - x[0])
    diff = yn - xn
    k = diff.argmax(1)
    knee = x[k].astype(float)
    rises = (Y[:, -1] - Y[:, 0]) > 1e-9 * np.maximum(1.0, np.abs(Y).max(1))
    knee[~rises | (diff.max(1) <= 1e-9)] = np.nan
    return knee[0] if np.ndim(y) == 1 else knee


def kneedle_rank(family: Family, theta: np.ndarray, lo: float, hi: float, min_rise: float = 0.0) -> np.ndarray:
    """Kneedle on the fitted curve over log2(rank) in [lo, hi]; theta (q,) or (m, q) -> rank(s).

    NaN where there is no knee, or where the curve rises by less than `min_rise` points over [lo, hi]
    (Kneedle is scale-free: it would find a "knee" in a rise of 0.01 points).
    """
    rg = rank_grid(lo, hi)
    y = family.predict(theta, rg)
    knee = np.atleast_1d(2.0 ** kneedle(np.log2(rg), y))
    knee[np.ptp(np.atleast_2d(y), axis=1) < min_rise] = np.nan
    return knee[0] if np.ndim(theta) == 1 else knee


# -- trend tests -----------------------------------------------------------------------------------

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


# -- one sweep ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ModelFit:
    """One family fitted to a sweep. theta, lo, hi: (q,) estimates and 95% bounds in `names` order."""

    family: Family
    theta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    rss: float
    aicc: float | None          # None when n <= q + 2 (AICc undefined)
    r2: float                   # 1 - RSS/TSS over all points
    loo_rmse: float | None      # leave-one-rank-out RMSE of the rank means (points); None under 4 ranks
    weight: float | None = None  # Akaike weight among the families compared
    lack_of_fit_p: float | None = None  # F-test of the curve against the rank means (`lack_of_fit_p`)

    @property
    def name(self) -> str:
        return self.family.name

    def params(self) -> dict[str, list[float]]:
        """name -> [estimate, lo, hi]."""
        return {k: [float(t), float(a), float(b)]
                for k, t, a, b in zip(self.family.names, self.theta, self.lo, self.hi)}

    def to_dict(self) -> dict:
        return plain({"model": self.name, "params": self.params(), "rss": self.rss, "aicc": self.aicc,
                      "akaike_weight": self.weight, "r2": self.r2, "loo_rmse": self.loo_rmse,
                      "lack_of_fit_p": self.lack_of_fit_p})


@dataclass(frozen=True, eq=False)
class SweepFit:
    """Everything estimated from one sweep's points.

    ranks, seeds, acc: (n,) the points; levels (k,) distinct ranks with means, ci_lo, ci_hi (k,)
    (t-interval over seeds; NaN with one seed). fits: family name -> ModelFit, best first by AICc.
    elbow, elbow_ci: the doubling elbow (inf: beyond the horizon) and its 95% interval;
    kneedle, kneedle_ci: Kneedle on the best fitted curve (NaN: no knee); kneedle_data: on the means.
    elbow_means, elbow_means_ci: the doubling rule on the measured means, no curve (`means_elbow`;
    inf: not reached), and its 95% interval (`means_elbow_interval`).
    curve_r (G,) and band (2, G): the best fit's pointwise 95% bootstrap band over the measured range.
    """

    ranks: np.ndarray
    seeds: np.ndarray
    acc: np.ndarray
    levels: np.ndarray
    means: np.ndarray
    ci_lo: np.ndarray
    ci_hi: np.ndarray
    fits: dict[str, ModelFit]
    delta: float
    horizon: float
    interval: str
    n_boot: int
    elbow: float
    elbow_ci: tuple[float, float]
    kneedle: float
    kneedle_ci: tuple[float, float]
    kneedle_data: float
    elbow_means: float
    elbow_means_ci: tuple[float, float]
    trends: Trends
    curve_r: np.ndarray
    band: np.ndarray
    notes: tuple[str, ...]
    selection: dict = field(default_factory=dict)   # family name -> share of bootstrap replicates choosing it
    elbow_ci_fixed: tuple[float, float] = (math.nan, math.nan)  # the interval if the best family were known

    @property
    def best(self) -> ModelFit:
        return next(iter(self.fits.values()))

    @property
    def n_seeds(self) -> int:
        return int(np.unique(self.seeds).size)

    def to_dict(self) -> dict:
        nan = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
        return plain({
            "ranks": [int(r) if float(r).is_integer() else float(r) for r in self.levels],
            "n_seeds": self.n_seeds, "n_runs": int(self.acc.size),
            "means": self.means, "means_ci": np.stack([self.ci_lo, self.ci_hi], 1),
            "best_model": self.best.name, "params": self.best.params(),
            "elbow": nan(self.elbow), "elbow_ci": [nan(v) for v in self.elbow_ci],
            "family_chosen": dict(self.selection), "elbow_ci_fixed_family": [nan(v) for v in self.elbow_ci_fixed],
            "kneedle": nan(self.kneedle), "kneedle_ci": [nan(v) for v in self.kneedle_ci],
            "kneedle_data": nan(self.kneedle_data), "elbow_means": nan(self.elbow_means),
            "elbow_means_ci": [nan(v) for v in self.elbow_means_ci],
            "r2": self.best.r2, "loo_rmse": self.best.loo_rmse, "lack_of_fit_p": self.best.lack_of_fit_p,
            **self.trends.to_dict(),
            "delta": self.delta, "horizon": self.horizon, "interval": self.interval, "n_boot": self.n_boot,
            "models": [f.to_dict() for f in self.fits.values()],
            "notes": list(self.notes),
        })


def _aicc(rss: float, n: int, q: int) -> float | None:
    k = q + 1                                    # + the noise variance
    if n - k - 1 <= 0:
        return None
    return float(n * math.log(max(rss, 1e-12) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1))


def lack_of_fit_p(rss: float, ranks: np.ndarray, acc: np.ndarray, q: int) -> float | None:
    """Lack-of-fit F-test: p of a q-parameter curve leaving `rss` if it ran through the rank means.

    The seeds' scatter within each rank is the pure error; what the curve leaves beyond it, over the
    L - q degrees of freedom the ranks spare, is its misfit. None without replicates or spare ranks.
    """
    levels = np.unique(ranks)
    pure = sum(float(((acc[ranks == r] - acc[ranks == r].mean()) ** 2).sum()) for r in levels)
    L, n = levels.size, acc.size
    if n <= L or L <= q or pure <= 0:
        return None
    f = (max(rss - pure, 0.0) / (L - q)) / (pure / (n - L))
    return float(stats.f.sf(f, L - q, n - L))


def means_elbow(levels: np.ndarray, means: np.ndarray, delta: float) -> float | np.ndarray:
    """The doubling rule without a curve: the smallest measured rank from which every measured step
    up the ranks gains less than delta on the means; inf when even the last step gains delta.
    levels (k,), means (k,) or (m, k) -> float or (m,)."""
    after = _last_true(np.diff(np.atleast_2d(means), axis=1) >= delta) + 1    # the rank after the last big step
    out = np.where(after < levels.size - 1, np.asarray(levels, float)[np.minimum(after, levels.size - 1)], np.inf)
    return float(out[0]) if np.ndim(means) == 1 else out


def means_elbow_interval(ranks: np.ndarray, acc: np.ndarray, delta: float, n_boot: int,
                         rng: np.random.Generator, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of `means_elbow` (measured ranks or inf) over a bootstrap within each rank.

    Each rank's runs are resampled with replacement; their deviations from the rank's mean are
    rescaled by sqrt(m/(m-1)) for its m runs, so the resampled means keep the runs' variance (plain
    resampling of 3 seeds shrinks it by 2/3). A rank with one run does not vary.
    """
    levels = np.unique(ranks)
    means = np.empty((n_boot, levels.size))
    for j, r in enumerate(levels):
        v = acc[ranks == r]
        dev = (v - v.mean()) * (math.sqrt(v.size / (v.size - 1)) if v.size > 1 else 0.0)
        means[:, j] = v.mean() + dev[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means_elbow(levels, means, delta), [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def _loo_rmse(family: Family, ranks: np.ndarray, acc: np.ndarray) -> float | None:
    """Leave each rank out, fit the rest, predict its mean: RMSE over ranks (the ends extrapolate)."""
    levels = np.unique(ranks)
    if levels.size < 4:
        return None
    errors = []
    for r in levels:
        keep = ranks != r
        theta, _ = fit_many(family, ranks[keep], acc[keep][None])
        errors.append(family.predict(theta[0], np.array([r]))[0] - acc[~keep].mean())
    return float(np.sqrt(np.mean(np.square(errors))))


@dataclass(frozen=True, eq=False)
class Bootstrap:
    """A point fit and its bootstrap: theta (q,), rss, replicates boot (B, q), tail = percentile per side."""

    family: Family
    theta: np.ndarray
    rss: float
    boot: np.ndarray
    tail: float

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each (q,): the expanded percentile interval of every parameter."""
        return (np.quantile(self.boot, self.tail, axis=0, method="lower"),
                np.quantile(self.boot, 1 - self.tail, axis=0, method="higher"))


def bootstrap(family: Family, ranks, seeds, acc, *, n_boot: int = 1000, interval: str = "residual",
              rng: np.random.Generator | int | None = 0) -> Bootstrap:
    """Fit `family` to the points ranks, seeds, acc (n,) and bootstrap it (see the module docstring).

    interval "residual": the fit's residuals, rescaled by sqrt(n/(n-q)) and centred, are resampled onto
    the fitted curve; "seeds": whole seeds are resampled (as weights on their points).
    """
    ranks, seeds, acc = check_points(ranks, seeds, acc)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, q = acc.size, family.n_params
    theta, rss = fit_many(family, ranks, acc[None])
    levels = np.unique(seeds)
    W = None
    if interval == "seeds":
        draws = rng.integers(0, levels.size, (n_boot, levels.size))
        counts = (draws[:, :, None] == np.arange(levels.size)).sum(1)            # (B, S)
        W = counts[:, np.searchsorted(levels, seeds)].astype(float)
        Y = np.broadcast_to(acc, (n_boot, n))
    elif interval == "residual":
        fitted = family.predict(theta[0], ranks)
        resid = (acc - fitted) * math.sqrt(n / max(n - q, 1))
        Y = fitted + (resid - resid.mean())[rng.integers(0, n, (n_boot, n))]
    else:
        raise UserError(f"interval {interval!r}: choose residual or seeds")
    boot, _ = fit_many(family, ranks, Y, W)
    return Bootstrap(family, theta[0], float(rss[0]), boot, expanded_tail(interval, n, q, levels.size))


def selection_bootstrap(boots: list[Bootstrap], weights: np.ndarray, ranks, seeds, acc, *, delta: float, lo: float,
                        hi: float, n_boot: int, interval: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The doubling elbow with the choice of family redone in every bootstrap replicate.

    Replicates are drawn around the Akaike-weighted average of the families' fitted curves (its
    residuals rescaled by sqrt(n/(n-q)) and resampled; "seeds": whole seeds resampled as weights), so
    no one family is taken as the truth; in each, every family is refitted and the one with the
    smallest AICc gives the replicate's elbow. Returns elbows (B,) and the chosen family's index (B,)
    into `boots`. Given the family chosen once, the 95% interval covered the true elbow 74–98% of the
    time across benchmarks/elbow_coverage.py's cells (exponential truths: 74–89%); re-selecting, 87–100%.
    """
    n = acc.size
    W = None
    if interval == "seeds":
        levels = np.unique(seeds)
        draws = rng.integers(0, levels.size, (n_boot, levels.size))
        W = (draws[:, :, None] == np.arange(levels.size)).sum(1)[:, np.searchsorted(levels, seeds)].astype(float)
        Y = np.broadcast_to(acc, (n_boot, n))
    else:
        fitted = sum(w * b.family.predict(b.theta, ranks) for w, b in zip(weights, boots))
        q = max(b.family.n_params for b in boots)
        resid = (acc - fitted) * math.sqrt(n / max(n - q, 1))
        Y = fitted + (resid - resid.mean())[rng.integers(0, n, (n_boot, n))]
    aicc, elbows = np.empty((len(boots), n_boot)), np.empty((len(boots), n_boot))
    for i, b in enumerate(boots):
        theta, rss = fit_many(b.family, ranks, Y, W)
        aicc[i] = n * np.log(np.maximum(rss, 1e-12) / n) + _aicc(float(n), n, b.family.n_params)  # + penalty
        elbows[i] = doubling_elbow(b.family, theta, delta, lo, hi)
    chosen = aicc.argmin(0)
    return elbows[chosen, np.arange(n_boot)], chosen


def expanded_tail(interval: str, n: int, q: int, n_seeds: int, level: float = LEVEL) -> float:
    """Tail probability per side of the percentile interval, widened for small samples.

    A plain percentile interval behaves like estimate +- z * se and under-covers when se itself is
    estimated from few residuals (about 92.5% instead of 95% at n - q = 12). As in Hesterberg's
    expanded percentile interval, the percentiles are taken where z equals the Student quantile:
    t(n - q) for the residual bootstrap (whose residuals are already rescaled by sqrt(n/(n-q))),
    sqrt(S/(S-1)) * t(S - 1) for a bootstrap over S seeds.
    """
    upper = 0.5 + level / 2
    if interval == "seeds":
        z = math.sqrt(n_seeds / (n_seeds - 1)) * stats.t.ppf(upper, n_seeds - 1)
    else:
        z = stats.t.ppf(upper, max(n - q, 1))
    return float(stats.norm.sf(z))


def _interval(samples: np.ndarray, tail: float) -> tuple[float, float]:
    """Percentiles (tail, 1 - tail) of samples (B,); NaN and inf count as beyond every finite value."""
    s = np.sort(np.where(np.isnan(samples), np.inf, samples))
    if s.size == 0:
        return (math.nan, math.nan)
    return (float(np.quantile(s, tail, method="lower")), float(np.quantile(s, 1 - tail, method="higher")))


def check_points(ranks, seeds, acc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a sweep's points: three equal-length 1-D arrays, finite, ranks >= 1 -> (n,) each."""
    ranks, seeds, acc = (np.asarray(v).ravel() for v in (ranks, seeds, acc))
    if not (ranks.size == seeds.size == acc.size) or acc.size == 0:
        raise UserError(f"ranks, seeds and accuracies must have one entry per run "
                        f"(got {ranks.size}, {seeds.size}, {acc.size})")
    ranks, acc = ranks.astype(float), acc.astype(float)
    if not np.all(np.isfinite(acc)) or not np.all(np.isfinite(ranks)) or np.any(ranks < 1):
        raise UserError("accuracies must be finite and ranks >= 1")
    return ranks, seeds, acc


def fit_sweep(ranks, seeds, acc, *, tail=None, families=None, delta: float = DELTA, n_boot: int = 1000,
              interval: str = "residual", horizon: float = HORIZON,
              rng: np.random.Generator | int | None = 0) -> SweepFit:
    """Fit the capacity families to one sweep and estimate its elbow with intervals.

    ranks, seeds, acc: (n,) one entry per run (accuracy in points). tail: tau(0..m) (m+1,) of a
    measured spectrum, enabling the "spectral" family. families: names to compare (default: all
    the data allow). interval: "residual" or "seeds" (see `bootstrap`). Raises UserError when the
    sweep is too small to fit (fewer than 3 ranks, or fewer than q + 3 runs, where AICc is undefined).
    """
    ranks, seeds, acc = check_points(ranks, seeds, acc)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    levels = np.unique(ranks)
    n, n_seeds = acc.size, np.unique(seeds).size
    if levels.size < 3:
        raise UserError(f"needs at least 3 distinct ranks to fit a curve, got "
                        f"{', '.join(f'{r:g}' for r in levels)}")
    if delta <= 0 or horizon < 1 or n_boot < 10:
        raise UserError("delta must be > 0, horizon >= 1 and n_boot >= 10")
    if interval == "seeds" and n_seeds < 2:
        raise UserError("a bootstrap over seeds needs at least 2 seeds")
    names = families or [f for f in FAMILIES if f != "spectral" or tail is not None]
    fams = [f for f in (make_family(name, ranks, tail) for name in names) if n >= f.n_params + 3]
    if not fams:
        raise UserError(f"{n} runs over {levels.size} ranks are too few for a 3-parameter fit with AICc "
                        f"(need at least 6 runs): add seeds or ranks")

    boots = [bootstrap(f, ranks, seeds, acc, n_boot=n_boot, interval=interval, rng=rng) for f in fams]
    aicc = np.array([_aicc(b.rss, n, b.family.n_params) for b in boots])
    weights = np.exp(-0.5 * (aicc - aicc.min()))
    weights /= weights.sum()
    tss = float(((acc - acc.mean()) ** 2).sum())
    fits: dict[str, ModelFit] = {}
    for i in np.argsort(aicc, kind="stable"):                     # best first; ties keep FAMILIES order
        b = boots[i]
        fits[b.family.name] = ModelFit(b.family, b.theta, *b.interval(), b.rss, float(aicc[i]),
                                       1 - b.rss / tss if tss > 0 else math.nan,
                                       _loo_rmse(b.family, ranks, acc), float(weights[i]),
                                       lack_of_fit_p(b.rss, ranks, acc, b.family.n_params))
    best = boots[int(np.argsort(aicc, kind="stable")[0])]
    fam = best.family
    lo_r, hi_r = float(levels.min()), float(levels.max())
    curve_r = rank_grid(lo_r, hi_r, 200)
    elbows = doubling_elbow(fam, best.boot, delta, lo_r, hi_r * horizon)
    knees = kneedle_rank(fam, best.boot, lo_r, hi_r, delta)
    selected, chosen = selection_bootstrap(boots, weights, ranks, seeds, acc, delta=delta, lo=lo_r,
                                           hi=hi_r * horizon, n_boot=n_boot, interval=interval, rng=rng)
    means = np.array([acc[ranks == r].mean() for r in levels])
    out = SweepFit(
        ranks, seeds, acc, levels, means, *_mean_ci(ranks, acc, levels), fits, delta, horizon, interval, n_boot,
        elbow=float(doubling_elbow(fam, best.theta, delta, lo_r, hi_r * horizon)),
        elbow_ci=_interval(selected, best.tail), elbow_ci_fixed=_interval(elbows, best.tail),
        selection={b.family.name: float(np.mean(chosen == i)) for i, b in enumerate(boots)},
        kneedle=float(kneedle_rank(fam, best.theta, lo_r, hi_r, delta)), kneedle_ci=_interval(knees, best.tail),
        kneedle_data=float(2.0 ** kneedle(np.log2(levels), means)), elbow_means=means_elbow(levels, means, delta),
        elbow_means_ci=means_elbow_interval(ranks, acc, delta, n_boot, rng),
        trends=trend_tests(ranks, seeds, acc),
        curve_r=curve_r, band=np.quantile(fam.predict(best.boot, curve_r), [best.tail, 1 - best.tail], axis=0),
        notes=())
    return _with_notes(out)


def _mean_ci(ranks, acc, levels):
    """t-interval of each rank's mean over its seeds: (k,) lo, hi; NaN where a rank has one run."""
    lo, hi = np.full(levels.size, np.nan), np.full(levels.size, np.nan)
    for i, r in enumerate(levels):
        v = acc[ranks == r]
        if v.size >= 2:
            half = stats.t.ppf(0.5 + LEVEL / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
            lo[i], hi[i] = v.mean() - half, v.mean() + half
    return lo, hi


def _with_notes(fit: SweepFit) -> SweepFit:
    """Plain-language verdicts on the statistics (significance level ALPHA_TEST)."""
    notes = []
    t = fit.trends
    if fit.n_seeds == 1:
        notes.append("single seed: intervals rest on the scatter around the curve only")
    if fit.acc.max() <= 1.0:
        notes.append("all accuracies <= 1: they look like fractions, but delta is in points (0-100)")
    if t.monotone_p is None or t.monotone_p >= ALPHA_TEST:
        notes.append(f"no significant increase with rank ({t.monotone_test} p={p_text(t.monotone_p)}): "
                     "the curve may already be flat at the smallest rank")
    if t.diminishing_p is None or t.diminishing_p >= ALPHA_TEST:
        notes.append(f"gains per doubling do not diminish significantly (p={p_text(t.diminishing_p)})")
    if t.decline_p is not None and t.decline_p < ALPHA_TEST:
        notes.append(f"accuracy falls over the upper ranks (p={p_text(t.decline_p)}): not monotone; "
                     "saturating fits are misspecified there")
    if not np.isfinite(fit.elbow):
        notes.append(f"a doubling still gains >= {fit.delta:g} points at {fit.horizon:g}x the largest rank: "
                     "no elbow within the horizon")
    elif not np.isfinite(fit.elbow_ci[1]):
        notes.append(f"the elbow's upper bound lies beyond {fit.horizon:g}x the largest rank")
    if np.isfinite(fit.elbow) and fit.elbow > fit.levels.max():
        notes.append("the elbow is extrapolated beyond the largest measured rank")
    best = fit.best
    if fit.selection and fit.selection.get(best.name, 1.0) < 0.5:
        notes.append("the family is uncertain: bootstrap replicates chose " + ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(fit.selection.items(), key=lambda kv: -kv[1]) if v > 0)
            + "; the elbow's interval includes that choice")
    if best.lack_of_fit_p is not None and best.lack_of_fit_p < ALPHA_TEST:
        notes.append(f"the {best.name} model misses the rank means beyond the seeds' scatter (lack-of-fit "
                     f"p={p_text(best.lack_of_fit_p)}): its elbow and intervals rest on a curve the data "
                     f"reject; compare the elbow on the means ({fit.elbow_means:g})")
    if best.family.grid.size and best.theta[1] == 0:
        notes.append(f"the {best.name} model has {best.family.names[1]} = 0 (no rise): "
                     f"its {best.family.names[-1]} is not identified")
    elif best.family.grid.size and best.theta[-1] in (best.family.grid[0], best.family.grid[-1]):
        notes.append(f"{best.family.names[-1]} of the {best.name} model is at its search bound")
    return SweepFit(**{**fit.__dict__, "notes": tuple(notes)})


def p_text(p) -> str:
    """A p-value to 2 significant digits ("n/a": no test)."""
    return "n/a" if p is None else f"{p:.2g}"


# -- spectrum -> sweep ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SpectrumPrediction:
    """A sweep's shape predicted from a spectrum: acc(r) = A - a T(r), T = tau/tau(0).

    Only the scale is taken from the sweep - A and a make the curve pass through the means at the
    smallest and largest measured rank - so the ranks in between are predicted, not fitted.
    levels, measured, predicted: (k,). rmse: over the interior ranks (None under 3 ranks); noise: the
    RMS standard error of those means (what an exact prediction would still miss by); elbow, kneedle:
    of the predicted curve (NaN when the sweep does not rise between its end ranks).
    """

    levels: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    A: float
    a: float
    rmse: float | None
    noise: float | None
    elbow: float
    kneedle: float
    source: str
    tail: np.ndarray            # T = tau/tau(0), (m+1,)

    def curve(self, r: np.ndarray) -> np.ndarray:
        """The predicted accuracy at ranks r (G,) -> (G,)."""
        return self.A - self.a * normalized_tail(self.tail, r)

    def to_dict(self) -> dict:
        fin = lambda v: float(v) if v is not None and np.isfinite(v) else None  # noqa: E731
        return plain({"source": self.source, "A": self.A, "a": self.a,
                      "predicted": self.predicted, "measured": self.measured, "rmse": self.rmse,
                      "noise": self.noise, "elbow": fin(self.elbow), "kneedle": fin(self.kneedle)})


def predict_from_spectrum(tail, levels, means, se=None, *, delta: float = DELTA, horizon: float = HORIZON,
                          source: str = "spectrum") -> SpectrumPrediction:
    """Predict the accuracy-vs-rank curve and its elbow from a spectrum's tail energy.

    tail: tau(0..m) (m+1,) (or already normalised); levels, means: (k,) distinct ranks (ascending)
    and their mean accuracy; se: (k,) standard errors of the means, or None.
    """
    fam = make_family("spectral", levels, tail)
    levels, means = np.asarray(levels, float), np.asarray(means, float)
    if levels.size < 2 or np.any(np.diff(levels) <= 0) or levels.size != means.size:
        raise UserError("a spectrum prediction needs at least 2 distinct ascending ranks with one mean each")
    t = normalized_tail(fam.tail, levels)
    drop = t[0] - t[-1]
    a = float((means[-1] - means[0]) / drop) if drop > 0 else 0.0
    A = float(means[-1] + a * t[-1])
    theta = np.array([A, a, 0.0])
    predicted = fam.predict(theta, levels)
    rmse = noise = None
    if levels.size >= 3:
        rmse = float(np.sqrt(np.mean((predicted[1:-1] - means[1:-1]) ** 2)))
        if se is not None and np.all(np.isfinite(np.asarray(se, float)[1:-1])):
            noise = float(np.sqrt(np.mean(np.asarray(se, float)[1:-1] ** 2)))
    rises = a > 0
    lo, hi = float(levels[0]), float(levels[-1])
    elbow = float(doubling_elbow(fam, theta, delta, lo, hi * horizon)) if rises else math.nan
    knee = float(kneedle_rank(fam, theta, lo, hi, delta)) if rises else math.nan
    return SpectrumPrediction(levels, means, predicted, A, a, rmse, noise, elbow, knee, source, fam.tail / fam.tail[0])
