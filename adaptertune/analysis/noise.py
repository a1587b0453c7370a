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
    i ≤ kmax — family-wise ≤ α on a bulk. The gap is looked for only among the directions the
    permutation test found: one deeper can only be the bulk's own, and it used to turn the
    permutation count into the answer (AR(1) noise at 200 × 200: 2 of 15 false positives in 1000
    draws, ~31 false directions each).
  Taking the smaller count (an intersection–union rule) keeps the false-positive rate ≤ α whenever
  *either* null holds: i.i.d. heavy tails (permutation exact, edge test not), correlated features
  (edge test valid, permutation not), a variance profile over samples and/or features (biwhitening).
  Noise both heavy-tailed and correlated across features is covered by neither null exactly; there
  winsorizing leaves a light-tailed correlated bulk for the edge test, and benchmarks/noise_floor.py
  measures it (t3 entries or a multivariate t3, AR(1)-mixed). The price of the edge test: a shift
  spread over many comparable directions, with no gap after the last, counts 0 — and must, since
  correlated noise gives the same two counts (at 1000 × 64: parallel analysis 26-30, edge 0-1; a
  vit_micro every-block shift 16 points over head-only: 32 and 0). `analyze spectrum` marks such a
  count †, and `recommend` reads the parallel-analysis count there when the run's gain says it is
  not noise.

The diagnostic (`NoiseFloor.white`) passes when the bulk left by the white test fits the
Marchenko–Pastur law (Kolmogorov–Smirnov) and, once the white test's directions are projected out,
the row and column energies disperse as white noise's do and the entries' excess kurtosis is ~0;
only then does the white count stand — and only if the edge-spacing test on the same eigenvalues
finds at least as many directions (`counts["edge_unscaled"]`): at 200 × 200, noise with covariance
eigenvalues spread evenly over [0.25, 1.75] passed the diagnostic and gave the white test false
directions in every draw, but shows no gap. When the diagnostic passes but the gap is missing, the
robust count is also capped by that unscaled edge count: the noise is then neither heteroscedastic nor
heavy-tailed, so the unscaled test is valid, and without the cap such noise had two chances at α — the
edge test on the unscaled eigenvalues (keeping the white count) and again on the biwhitened ones: 1.4%
false positives at most over 6000 draws of that noise (the permutation count taken as positive), 0.6%
with the cap; what is left is the edge test's own rate (1.1% over 1000 draws). (The KS check alone, the
previous `white`, passed i.i.d. t3 noise in which the white test found 3-5 false directions.)
`NoiseFloor.null` says which null was used; benchmarks/noise_floor.py measures false-positive rates and
power per noise kind.

Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from .noise_robust import N_PERM, _kmax, edge_count, robust_counts
from .noise_white import _noise_variance, _unit_eigenvalues, _white_count

_EPS = np.finfo(np.float64).eps


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
    lam = _unit_eigenvalues(s, small)
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
            if white.white:  # homoscedastic, light-tailed: the unscaled edge test is valid too, and must agree
                k = min(k, counts["edge_unscaled"])
            threshold = None
    sigma2, signal = _noise_variance(lam, k, big, small)
    return NoiseFloor(k, float(unit * np.sqrt(sigma2)), None if threshold is None else float(unit * np.sqrt(threshold)),
                      unit * np.sqrt(signal), float(min(signal.sum() / lam.sum(), 1.0)), bulk_ks, alpha, rows, cols,
                      null, counts, **extra)


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
