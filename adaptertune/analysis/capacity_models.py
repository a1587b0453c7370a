"""The capacity model's curves: model families, vectorised constrained least squares, the doubling elbow
and Kneedle on a fitted curve, and the curve a measured spectrum predicts (no run directories, no files).

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
`capacity_fit` fits a sweep with them; `capacity_trends` holds the model-free trend tests.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..runs import _plain as plain   # JSON-safe: arrays to lists, NaN/inf to None

FAMILIES = ("power", "exp", "flat", "spectral")
DELTA = 0.5          # points a doubling must gain to be worth it
HORIZON = 8.0        # the elbow is searched up to HORIZON x the largest measured rank
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
    WY = Y if W is None else W * Y
    sw, sy = (np.full(Y.shape[:-1], float(Y.shape[-1])) if W is None else W.sum(-1)), WY.sum(-1)
    my = sy / sw
    k = Z.shape[-1]
    cols = [np.ascontiguousarray(Z[..., a]) for a in range(k)]             # (G, n) or (m, n)
    if shared:
        dot = lambda u, v: np.einsum("gn,mn->gm", u, v)   # noqa: E731  not BLAS: its threads stall on small products
    else:
        dot = lambda u, v: (u * v).sum(-1)                                   # noqa: E731  row by row
    if W is None:                        # unit weights: the design's sums need no product with the responses
        wsum = (lambda u: u.sum(-1)[:, None]) if shared else (lambda u: u.sum(-1))  # noqa: E731
    else:
        wsum = lambda u: dot(u, W)                                           # noqa: E731
    sz = [wsum(z) for z in cols]
    mz = [s / sw for s in sz]
    czy = [dot(z, WY) - s * my for z, s in zip(cols, sz)]
    czz = [[wsum(cols[a] * cols[b]) - sz[a] * mz[b] for b in range(k)] for a in range(k)]
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
    X = family.design(r, family.grid)                                        # (G, n, q), shared by every chunk
    parts = [_fit_chunk(family, r, X, Y[i:i + _CHUNK], None if W is None else W[i:i + _CHUNK])
             for i in range(0, max(Y.shape[0], 1), _CHUNK)]                 # keep the (G, m) work arrays in cache
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _fit_chunk(family: Family, r: np.ndarray, X: np.ndarray, Y: np.ndarray, W: np.ndarray | None):
    """`fit_many` for up to _CHUNK responses, X the design on the family's grid."""
    grid, m = family.grid, Y.shape[0]
    rss = _lsq(X, Y, family.nonneg, W)[1]                                    # (G, m)
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
