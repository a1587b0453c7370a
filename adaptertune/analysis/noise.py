"""Noise floors: how many directions of a shift stand above its noise, under which null.

Two nulls, and a diagnostic that says which one applies (`noise_floor`):

- **white** (Marchenko–Pastur / Tracy–Widom): Δ = L + E with E_ij i.i.d., variance σ². Directions
  are tested one at a time (Kritchman & Nadler 2009): under "k directions are signal", σ² is
  estimated from the energy left once the k signal strengths are de-biased (Benaych-Georges &
  Nadakuditi 2012), and direction k+1 counts when its squared singular value exceeds
  σ²·(μ + s_α·σ_TW), the Marchenko–Pastur edge (√N + √P)² with its Tracy–Widom fluctuation
  (Johnstone 2001; Ma 2012's half-integer corrections). Exact, the most powerful, invariant to
  rotations of the feature space — and wrong off white noise: on pure noise with heavy tails, a
  noise level that varies across samples or features, or correlated features it finds "directions"
  in nearly every draw (benchmarks/noise_floor.py, column "white-only fp").
- **robust**: no distributional assumption beyond a noise bulk. The shift is first *biwhitened*
  (Landa, Zhang & Kluger 2022: rows and columns rescaled, Sinkhorn-style, so every row and every
  column has the same mean square — a variance that varies by sample, by feature or both is then
  flat; the rank of L is unchanged by the diagonal scalings), winsorized at 4 robust standard
  deviations and re-centered orthogonally to the row scales (centering at the inverse-variance
  weighted means: re-centering with equal weights left a false direction along the row scales when
  a sample's scale is heavy-tailed, `biwhiten`). Then two tests, each valid under a different null,
  and the count is the smaller:
  * *parallel analysis* (Horn 1965; Buja & Eyuboglu 1992): each feature column is permuted
    independently, keeping every feature's marginal distribution (heavy tails included) and
    destroying what links the features; direction k+1 counts when the permutation p-value of its
    eigenvalue against the same order statistic of `n_perm` permuted matrices is ≤ α, stepping
    down — stopping at the first failure — so the family-wise rate is ≤ α; the directions found
    are then deflated and the residual tested again (`permutation_count`). Exact when noise
    entries are exchangeable within columns and columns independent.
  * an *edge-spacing* test (after Onatski 2009/2010): the top eigenvalues of a noise bulk follow
    the Tracy–Widom edge whatever the bulk's shape (correlated features, any population covariance
    without spikes: edge universality), so the ratio of the gap after eigenvalue i to the spread
    of the next SPREAD eigenvalues is free of the bulk's location and scale. Its law is simulated from the
    white Gaussian model of the same size (the Laguerre bidiagonal of Dumitriu & Edelman 2002);
    the count is the largest i ≤ kmax whose ratio exceeds the 1−α quantile of the maximum over
    i ≤ kmax — family-wise ≤ α on a bulk.
  Taking the smaller count (an intersection–union rule) keeps the false-positive rate ≤ α whenever
  *either* null holds: i.i.d. heavy tails (permutation exact, edge test not), correlated features
  (edge test valid, permutation not), a variance profile over samples and/or features (biwhitening).
  Not covered: noise that is both heavy-tailed and correlated across features.

The diagnostic (`NoiseFloor.white`) passes when the bulk left by the white test fits the
Marchenko–Pastur law (Kolmogorov–Smirnov) and, once the white test's directions are projected out,
the row and column energies disperse as white noise's do and the entries' excess kurtosis is ~0;
only then does the white count stand — and only if the edge-spacing test on the same eigenvalues
finds at least as many directions (`counts["edge_unscaled"]`): at 200 × 200, noise with covariance
eigenvalues spread evenly over [0.25, 1.75] passed the diagnostic and gave the white test false
directions in every draw, but shows no gap. (The KS check alone, the previous `white`, passed i.i.d.
t3 noise in which the white test found 3-5 false directions.) `NoiseFloor.null` says which was used. benchmarks/noise_floor.py measures false-positive rates and power per noise kind.

Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

_EPS = np.finfo(np.float64).eps
N_PERM = 99          # permutations of parallel analysis (the smallest count that allows p = 0.01)
SPREAD = 8           # the edge-spacing ratio's denominator spans the next SPREAD eigenvalues
_EDGE_REPS = 1000    # draws of the white reference law of the edge-spacing statistic
_EDGE_SIZE = 256     # ... at most this many columns (see `edge_count`)
_CLIP = 4.0          # winsorize the biwhitened entries at this many robust standard deviations
_CHUNK = 8           # permuted matrices whose eigenvalues are computed together


@dataclass(frozen=True, eq=False)
class NoiseFloor:
    """How many directions of a shift stand above its noise floor, and under which null.

    significant: int          the count under the null that applies (`null`)
    null: str                 "white" (Marchenko–Pastur / Tracy–Widom) or "robust" (see the module docstring)
    counts: dict              every count computed: {"white": k, "permutation": k, "edge": k}
    sigma: float              noise level per entry of the shift (its units), white model at `significant`
    threshold: float | None   the singular value direction `significant + 1` had to exceed (white null; 0 if
                              none was left; None under the robust null, whose tests work on the rescaled shift)
    signal: (significant,)    de-biased singular values of the significant directions (noise removed)
    signal_fraction: float    Σ signal² / ‖Δ‖²: the share of the energy above the noise
    bulk_ks: float            Kolmogorov–Smirnov distance of the eigenvalues the white test left to Marchenko–Pastur
    dispersion: (2,)          variance of the row energies and of the column energies over white noise's (1 when
                              white; NaN when only singular values were given)
    kurtosis: float           excess kurtosis of the entries, each column standardized (0 when Gaussian; NaN: not known)
    alpha: float              family-wise false-alarm level of each test
    rows, cols: int           the noise matrix's size: samples (n − 1 when centered) × features
    """

    significant: int
    sigma: float
    threshold: float | None
    signal: np.ndarray
    signal_fraction: float
    bulk_ks: float
    alpha: float
    rows: int
    cols: int
    null: str = "white"
    counts: dict = field(default_factory=dict)
    dispersion: tuple[float, float] = (math.nan, math.nan)
    kurtosis: float = math.nan

    @property
    def white(self) -> bool:
        """Whether the noise looks like the white noise the MP/TW test assumes: the remaining bulk fits
        Marchenko–Pastur (KS ≤ max(0.1, 1/√m)) and, where the matrix was seen, the dispersion of row
        and column energies is within a factor 2 of white Gaussian noise's and the kurtosis within 4
        standard errors of 0."""
        m = max(min(self.rows, self.cols) - self.counts.get("white", self.significant), 1)
        if self.bulk_ks > max(0.1, 1 / math.sqrt(m)):
            return False
        return all(math.isnan(v) or abs(v - ref) <= lim for v, ref, lim in self._checks())

    def _checks(self):
        """(value, white value, tolerance) of each diagnostic. Dispersions within a factor 2 (+ 4 standard
        errors): projecting out the white test's directions leaves the energies of rows and columns a
        little uneven (white noise + 3 planted directions, 400 × 32: 2.2 for the columns)."""
        rows, cols = self.rows, self.cols
        yield self.dispersion[0], 1.0, 1 + 4 * math.sqrt((2 + 12 / cols) / rows)
        yield self.dispersion[1], 1.0, 1 + 4 * math.sqrt((2 + 12 / rows) / cols)
        yield self.kurtosis, 0.0, 4 * math.sqrt(24 / (rows * cols)) + 0.05

    def to_dict(self) -> dict:
        fin = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731
        return {"significant": self.significant, "noise_null": self.null, "noise_counts": dict(self.counts),
                "noise_sigma": self.sigma, "noise_floor": fin(self.threshold),
                "signal_fraction": self.signal_fraction, "noise_ks": self.bulk_ks, "noise_white": self.white,
                "noise_dispersion": [fin(v) for v in self.dispersion], "noise_kurtosis": fin(self.kurtosis),
                "alpha": self.alpha, "noise_rows": self.rows, "noise_cols": self.cols}


def noise_floor(singular_values, rows: int, cols: int, *, alpha: float = 0.01, resolution: float = 0.0,
                matrix: np.ndarray | None = None, n_perm: int = N_PERM,
                rng: np.random.Generator | int | None = 0) -> NoiseFloor:
    """Count the directions of a rows × cols shift that stand above its noise (module docstring).

    singular_values: (m,) descending, m >= min(rows, cols) (extra trailing zeros are ignored).
    rows, cols: the noise matrix's size — samples (n − 1 if the shift was centered) and features.
    matrix: the (centered) shift itself, (n', cols), n' <= n rows (a random subset of a large shift
        is fine), float64. Without it only the white test can run (and `white` rests on the bulk's fit).
    Directions at the float64 round-off level of the largest, or at or below `resolution` (the inputs'
    rounding, in the singular values' units), never count under either null.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    big, small = max(rows, cols), min(rows, cols)
    if small < 1 or len(s) == 0 or s[0] <= 0:
        return NoiseFloor(0, 0.0, 0.0, np.zeros(0), 0.0, 0.0, alpha, rows, cols, counts={"white": 0})
    unit = s[0]  # work in units of the top singular value: no overflow, and exactly scale-free
    lam = np.zeros(small)
    lam[: min(small, len(s))] = (s[:small] / unit) ** 2
    numerical = int((np.sqrt(lam) > max(np.sqrt(lam[0]) * big * _EPS * 4, resolution / unit)).sum())
    k, threshold, bulk_ks = _white_count(lam, big, small, alpha, numerical)
    white = NoiseFloor(k, 0.0, 0.0, np.zeros(0), 0.0, bulk_ks, alpha, rows, cols, counts={"white": k})
    null, counts, extra = "white", {"white": k}, {}
    if matrix is not None and _kmax(small) > 0:     # (the robust tests need more than SPREAD columns and rows)
        extra = dict(zip(("dispersion", "kurtosis"), white_diagnostics(_remove_top(matrix, k), k)))
        white = NoiseFloor(**{**white.__dict__, **extra})
        # the white count also needs a gap after it: the edge-spacing test on the same eigenvalues (valid
        # for any bulk) must find as many; correlated noise with n ≈ d passes the diagnostic, not this
        counts["edge_unscaled"] = min(edge_count(lam, big, small, alpha, _kmax(small)), numerical)
        if not white.white or counts["edge_unscaled"] < k:
            null = "robust"
            counts.update(robust_counts(matrix, alpha=alpha, n_perm=n_perm, rng=rng, limit=numerical))
            k = min(counts["permutation"], counts["edge"])
            threshold = None
    sigma2, signal = _noise_variance(lam, k, big, small)
    return NoiseFloor(k, float(unit * np.sqrt(sigma2)), None if threshold is None else float(unit * np.sqrt(threshold)),
                      unit * np.sqrt(signal), float(min(signal.sum() / lam.sum(), 1.0)), bulk_ks, alpha, rows, cols,
                      null, counts, **extra)


# -- the white null: Marchenko–Pastur edge + Tracy–Widom margin -------------------------------------------

def _white_count(lam: np.ndarray, big: int, small: int, alpha: float, numerical: int):
    """Sequential test, k = 0, 1, ...: σ²_k = noise variance if k directions are signal; direction
    k+1 is significant if s²_{k+1} > σ²_k·(μ + s_α·σ_TW), μ and σ_TW those of the largest eigenvalue
    of EᵀE for a big × (small − k) standard white E; stop at the first failure.
    Returns (k, threshold, KS distance of the untested eigenvalues to Marchenko–Pastur)."""
    quantile = tw1_quantile(1 - alpha)
    k = 0
    while True:
        sigma2, _ = _noise_variance(lam, k, big, small)
        if k >= min(numerical, small):  # nothing but round-off (or nothing at all) is left to test
            threshold = 0.0
            break
        mu, sd = _tw_center_scale(big, small - k)
        threshold = sigma2 * (mu + quantile * sd)
        if lam[k] <= threshold:
            break
        k += 1
    bulk = lam[k:] / (sigma2 * big) if sigma2 > 0 and k < numerical else np.zeros(0)
    return k, threshold, _mp_ks(bulk, len(bulk) / big)


def _mp_ks(x: np.ndarray, ratio: float) -> float:
    """Kolmogorov–Smirnov distance between values x (m,) and the Marchenko–Pastur law of ratio ≤ 1, unit variance.

    The MP law of the eigenvalues of EᵀE / big, E big × small white: density √((b−x)(x−a)) / (2π·ratio·x)
    on [a, b] = [(1 ∓ √ratio)²]; its CDF by quadrature in x = a + (b−a)(1 − cos t)/2 (smooth in t).
    """
    if len(x) == 0:
        return 0.0
    a, b = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    t = np.linspace(0.0, np.pi, 2049)
    grid = a + (b - a) * (1 - np.cos(t)) / 2
    density = ((b - a) / 2) ** 2 * np.sin(t) ** 2 / (2 * np.pi * ratio * np.maximum(grid, 1e-300))
    cdf = np.append(0.0, np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(t)))
    f = np.interp(np.sort(x), grid, cdf / cdf[-1], left=0.0, right=1.0)
    m = len(x)
    return float(max(np.max(np.arange(1, m + 1) / m - f), np.max(f - np.arange(m) / m)))


def _noise_variance(lam: np.ndarray, k: int, big: int, small: int) -> tuple[float, np.ndarray]:
    """Noise variance σ² and de-biased signal energies θj² (j < k) if the top k directions are signal.

    For Δ = L + E (E white, variance σ², big × small), E‖Δ‖² = Σθj² + big·small·σ², and a signal
    of strength θ appears at λ = (θ² + big·σ²)(θ² + small·σ²)/θ² (Benaych-Georges & Nadakuditi);
    the two are solved together by a fixed point (a contraction while k ≪ small).
    """
    total, top = lam.sum(), lam[:k]
    if k == 0:
        return total / (big * small), np.zeros(0)
    sigma2 = lam[k:].sum() / max((big - k) * (small - k), 1)
    theta2 = top
    for _ in range(100):
        b = top - (big + small) * sigma2
        disc = b * b - 4.0 * big * small * sigma2 ** 2
        theta2 = np.where(disc > 0, (b + np.sqrt(np.maximum(disc, 0.0))) / 2, np.maximum(b / 2, 0.0))
        new = max((total - theta2.sum()) / (big * small), 0.0)
        if abs(new - sigma2) <= 1e-13 * max(sigma2, 1e-300):
            sigma2 = new
            break
        sigma2 = new
    return sigma2, theta2


def _tw_center_scale(big: int, small: int) -> tuple[float, float]:
    """Centering and scale of the largest eigenvalue of EᵀE, E a big × small N(0, 1) matrix (Johnstone; Ma's n − ½)."""
    a, b = math.sqrt(big - 0.5), math.sqrt(max(small - 0.5, 0.5))
    return (a + b) ** 2, (a + b) * (1 / a + 1 / b) ** (1 / 3)


@functools.lru_cache(maxsize=32)
def tw1_quantile(q: float) -> float:
    """The q-quantile of the Tracy–Widom law TW1 (0.95 → 0.9793, 0.99 → 2.0234)."""
    from scipy.optimize import brentq

    return float(brentq(lambda x: tw1_cdf(x) - q, -8.0, 12.0, xtol=1e-10))


def tw1_cdf(x: float, nodes: int = 64) -> float:
    """TW1 distribution function, F1(x) = det(I − K) on L²(0, ∞), K(u, v) = ½·Ai(x + (u+v)/2).

    Gauss–Legendre quadrature of the Fredholm determinant (Bornemann 2010); ~1e-12 accurate.
    """
    from scipy.special import airy

    length = max(16.0, 16.0 - 2.0 * x)  # where the Airy kernel has decayed below round-off
    u, w = np.polynomial.legendre.leggauss(nodes)
    u, w = (u + 1) * length / 2, w * length / 2
    root = np.sqrt(w)
    kernel = 0.5 * airy(x + (u[:, None] + u[None, :]) / 2)[0]
    return float(np.linalg.det(np.eye(nodes) - root[:, None] * kernel * root[None, :]))


# -- the diagnostic ------------------------------------------------------------------------------------

def white_diagnostics(x: np.ndarray, removed: int = 0) -> tuple[tuple[float, float], float]:
    """((row dispersion, column dispersion), excess kurtosis) of a centered (n, d) matrix from which
    `removed` principal directions were projected out.

    Dispersion: the variance of the row energies Σ_j x_ij² over their mean², divided by 2/(d − removed)
    — its value for white Gaussian noise (each energy ~ σ²χ² with that many degrees of freedom);
    likewise for columns with 2/(n − 1 − removed). Both are ~1 for white noise and grow with a
    variance that varies across samples or features. Kurtosis: of all entries once each column is
    standardized.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x / (np.abs(x).max() or 1.0)
    sq = x * x
    out = []
    for axis, m in ((1, x.shape[1] - removed), (0, x.shape[0] - 1 - removed)):
        e = sq.sum(axis=axis)
        out.append(float(e.var() / max(e.mean() ** 2, 1e-300) * m / 2))
    z = x / np.maximum(np.sqrt(sq.mean(axis=0)), 1e-300)
    return (out[0], out[1]), float((z ** 4).mean() / max((z ** 2).mean() ** 2, 1e-300) - 3.0)


def _remove_top(x: np.ndarray, k: int) -> np.ndarray:
    """x (n, d) without its top k principal directions (projected out on the smaller side)."""
    if k == 0:
        return x
    x = np.asarray(x, dtype=np.float64)
    x = x / (np.abs(x).max() or 1.0)
    tall = x.shape[0] >= x.shape[1]
    g = x.T @ x if tall else x @ x.T
    m = g.shape[0]
    vecs = scipy.linalg.eigh(g, subset_by_index=[max(m - k, 0), m - 1])[1]
    return x - (x @ vecs) @ vecs.T if tall else x - vecs @ (vecs.T @ x)


# -- the robust null: biwhitening, parallel analysis, edge spacings -----------------------------------------

def biwhiten(x: np.ndarray, iters: int = 500, tol: float = 1e-8, center: bool = True) -> np.ndarray:
    """x (n, d) rescaled by diagonal matrices, D_r·x·D_c, so that every row's mean square and every
    column's mean square are equal (Sinkhorn iterations on x²; Landa et al. 2022), then winsorized at
    _CLIP robust standard deviations and (`center`) re-centered: each column projected off the row
    scales D_r·1. All-zero rows or columns stay zero.

    Why that centering: x was centered with equal weights, x = z − 1mᵀ, and D_r·1mᵀ is a rank-one
    term along the row scales r = D_r·1, not along 1. Subtracting the column means again leaves
    (I − 1·1ᵀ/n)(I − r·(1/r)ᵀ/n) applied to white noise, an oblique projection that stretches one
    direction of the samples' space by √(mean r²·mean r⁻²); with a heavy-tailed scale per sample
    (multivariate t3: 3 in expectation, more in a draw with one very large sample) that can pass the
    BBP threshold 1 + √(n/d) (2 for square noise), a false direction. Projecting the columns off r
    removes the centering term exactly and is orthogonal: it leaves white noise white, with one degree
    of freedom fewer, as centering does (and is centering when the rows' scales are equal);
    equivalently, the columns are centered at their inverse-variance weighted means."""
    x = np.asarray(x, dtype=np.float64)
    x = x / (np.abs(x).max() or 1.0)
    n, d = x.shape
    a = x * x
    r, c = np.ones(n), np.ones(d)
    for _ in range(iters):
        ac = a @ c
        r = np.where(ac > 0, d / np.where(ac > 0, ac, 1.0), 0.0)
        ar = a.T @ r
        c_new = np.where(ar > 0, n / np.where(ar > 0, ar, 1.0), 0.0)
        done = np.max(np.abs(c_new - c) / np.maximum(c_new, 1e-300)) < tol
        c = c_new
        if done:
            break
    y = x * np.sqrt(r)[:, None] * np.sqrt(c)[None, :]
    scale = 1.4826 * np.median(np.abs(y[y != 0])) if y.any() else 1.0
    y = np.clip(y, -_CLIP * scale, _CLIP * scale)
    if not center:
        return y
    u = np.sqrt(r) / (np.linalg.norm(np.sqrt(r)) or 1.0)
    return y - np.outer(u, u @ y)


def robust_counts(x: np.ndarray, *, alpha: float = 0.01, n_perm: int = N_PERM, kmax: int | None = None,
                  rng: np.random.Generator | int | None = 0, limit: int | None = None) -> dict:
    """{"permutation": k, "edge": k} for a centered (n, d) shift x, after `biwhiten`; counts <= limit."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    y = biwhiten(x)
    n, d = y.shape
    small = min(n - 1, d)
    kmax = _kmax(small) if kmax is None else kmax
    limit = small if limit is None else limit
    lam = _eigenvalues(y)
    return {"permutation": min(permutation_count(y, lam, alpha, n_perm, rng, kmax), limit),
            "edge": min(edge_count(lam, max(n - 1, d), small, alpha, kmax), limit)}


def _kmax(small: int) -> int:
    """The most directions the robust tests look for: half the smaller side, at most 64, leaving SPREAD."""
    return min(64, small // 2, small - SPREAD) if small > SPREAD else 0


def _eigenvalues(y: np.ndarray) -> np.ndarray:
    """Eigenvalues of the smaller Gram matrix of y (..., n, d), descending along the last axis."""
    g = np.swapaxes(y, -1, -2) @ y if y.shape[-2] >= y.shape[-1] else y @ np.swapaxes(y, -1, -2)
    return np.linalg.eigvalsh(g)[..., ::-1]


def permutation_count(y: np.ndarray, lam: np.ndarray, alpha: float, n_perm: int, rng: np.random.Generator,
                      kmax: int) -> int:
    """Parallel analysis with a step-down rule, deflated (after Dobriban & Owen 2019).

    Direction k+1 counts while the permutation p-value of its eigenvalue against the (k+1)-th
    eigenvalues of `n_perm` column-permuted copies is <= alpha; at the first failure, the k
    directions found are removed (their singular triplets subtracted) and the residual is tested the
    same way — permuting a matrix spreads its strong directions' energy over the bulk and would hide
    weaker ones behind them — until a round finds none. Only each direction's de-biased signal energy
    (`_noise_variance`) is removed, so the noise energy along it stays in the residual (removing it
    too would leave a bulk of lower dimension, which every permutation of it beats).
    lam: the eigenvalues of y's Gram, descending.
    """
    k, resid, svd = 0, y, None
    big, small = max(y.shape[0] - 1, y.shape[1]), min(y.shape[0] - 1, y.shape[1])
    while k < kmax:
        more = _step_down(resid, lam[k:], alpha, n_perm, rng, kmax - k)
        if more == 0:
            break
        k += more
        svd = np.linalg.svd(y, full_matrices=False) if svd is None else svd
        keep = np.sqrt(np.maximum(lam[:k] - _noise_variance(lam, k, big, small)[1], 0.0))  # their noise stays
        resid = y - (svd[0][:, :k] * (svd[1][:k] - keep)) @ svd[2][:k]
    return k


def _step_down(y: np.ndarray, lam: np.ndarray, alpha: float, n_perm: int, rng: np.random.Generator, kmax: int) -> int:
    """One round of the step-down test; permutations come in chunks and the round ends as soon as the
    first direction has lost (more permuted eigenvalues beat it than p <= alpha allows): on pure noise
    that is after the first chunk, almost always."""
    allowed = math.floor(alpha * (n_perm + 1)) - 1           # exceedances a direction may have and still count
    beaten = np.zeros(kmax, dtype=int)
    for i in range(0, n_perm, _CHUNK):
        null = _eigenvalues(np.stack([rng.permuted(y, axis=0) for _ in range(min(_CHUNK, n_perm - i))]))[:, :kmax]
        beaten += (null >= lam[:kmax]).sum(axis=0)
        if beaten[0] > allowed:
            return 0
    fails = np.nonzero(beaten > allowed)[0]
    return int(fails[0]) if fails.size else kmax


def spacing_ratios(lam: np.ndarray, kmax: int, spread: int = SPREAD) -> np.ndarray:
    """(..., kmax): the gap after eigenvalue i over the spread of the next `spread`, i = 1..kmax.

    (λ_i − λ_{i+1}) / (λ_{i+1} − λ_{i+spread}); lam (..., m) descending, m >= kmax + spread.
    Free of the bulk edge's location and scale; inf after an exactly zero bulk.
    """
    gap = lam[..., :kmax] - lam[..., 1:kmax + 1]
    width = lam[..., 1:kmax + 1] - lam[..., spread:kmax + spread]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(width > 0, gap / np.where(width > 0, width, 1.0), np.where(gap > 0, np.inf, 0.0))


def edge_count(lam: np.ndarray, big: int, small: int, alpha: float, kmax: int) -> int:
    """The largest i <= kmax whose spacing ratio exceeds the 1 − alpha quantile of the largest of
    kmax ratios at the top of a white noise bulk of the same size (0 if none does)."""
    if kmax < 1:
        return 0
    ref = min(small, _EDGE_SIZE)  # the ratio's law barely depends on the size (0.99 quantile, kmax = 64:
    # 0.777 at 2730 × 768, 0.788 at 1000 × 128 with kmax = 32): larger matrices use one of this size
    critical = float(np.quantile(_edge_reference(max(ref, round(big * ref / small)), ref, kmax), 1 - alpha,
                                 method="higher"))
    above = np.nonzero(spacing_ratios(lam, kmax) > critical)[0]
    return int(above[-1]) + 1 if above.size else 0


@functools.lru_cache(maxsize=64)
def _edge_reference(big: int, small: int, kmax: int, reps: int = _EDGE_REPS) -> np.ndarray:
    """(reps,) max_{i<=kmax} spacing ratio of the top eigenvalues of big × small white Gaussian matrices.

    Drawn through their bidiagonal form B (Golub–Kahan: diagonal χ_{big−i}, superdiagonal χ_{small−1−i}),
    the eigenvalues of the tridiagonal BᵀB; the top ones depend only on its leading block (the edge
    eigenvectors live there, as in Edelman & Persson's Tracy–Widom sampler), so the block is cut to the
    first size at which the wanted eigenvalues no longer change (checked on the first draws).
    """
    from scipy.linalg import lapack

    rng = np.random.default_rng(20240601)
    top = kmax + SPREAD
    i = np.arange(small)
    diag = np.sqrt(rng.chisquare(big - i, (reps, small)))
    sup = np.sqrt(rng.chisquare(np.maximum(small - 1 - i[:-1], 1), (reps, small - 1)))
    d = diag * diag + np.pad(sup * sup, ((0, 0), (1, 0)))
    e = diag[:, :-1] * sup

    def eig(j: int, size: int) -> np.ndarray:
        return lapack.dsterf(d[j, :size], e[j, :size - 1])[0][::-1][:top]

    size = min(small, max(100, 4 * top))
    while size < small:
        full = [eig(j, min(small, 2 * size)) for j in range(3)]
        if all(np.allclose(eig(j, size), f, rtol=0, atol=1e-9 * (f[0] - f[-1])) for j, f in enumerate(full)):
            break
        size = min(small, 2 * size)
    return np.array([spacing_ratios(eig(j, size), kmax).max() for j in range(reps)])
