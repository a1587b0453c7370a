"""The noise floor off white noise: which null applies, false positives and power under real-looking noise.

Small seeded versions of benchmarks/noise_floor.py (which prints the rates over hundreds of draws).
"""

import numpy as np
import pytest
from scipy import stats

from adaptertune.analysis import noise, noise_robust
from adaptertune.analysis.spectrum import spectrum

N, D = 300, 32


def pure(kind, rng, n=N, d=D):
    """Unit-RMS pure noise of a kind that defeats the white-noise floor."""
    if kind == "t3":
        x = rng.standard_t(3, (n, d))
    elif kind == "sample-variance":
        x = rng.standard_normal((n, d)) * rng.lognormal(0, 0.5, (n, 1))
    elif kind == "feature-variance":
        x = rng.standard_normal((n, d)) * rng.lognormal(0, 0.5, d)
    elif kind == "ar1":  # correlated features
        i = np.arange(d)
        x = rng.standard_normal((n, d)) @ np.linalg.cholesky(0.6 ** np.abs(i[:, None] - i[None, :])).T
    else:  # "even-cov": covariance eigenvalues spread evenly, square: passes the diagnostic, has no gap
        q = np.linalg.qr(rng.standard_normal((d, d)))[0]
        x = (rng.standard_normal((n, d)) * np.sqrt(np.linspace(0.25, 1.75, d))) @ q.T
    return x / np.sqrt((x * x).mean())


def planted(rng, k, n=N, d=D, factor=2.0, scale=1.0):
    """k directions at `factor` x the detection limit scale·(NP)^¼."""
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((d, k)))[0]
    return factor * scale * ((n - 1) * d) ** 0.25 * u @ v.T


@pytest.mark.parametrize("kind", ["t3", "sample-variance", "feature-variance", "ar1", "even-cov"])
def test_pure_noise_that_fools_the_white_floor_gives_no_direction_under_the_robust_null(kind):
    rng = np.random.default_rng(1)
    n, d = (120, 120) if kind == "even-cov" else (N, D)
    for _ in range(3):
        s = spectrum(pure(kind, rng, n, d))
        assert s.noise.counts["white"] > 0                  # Marchenko–Pastur alone: false directions
        assert s.noise.null == "robust"
        assert s.noise.white == (kind == "even-cov")        # that one passes the diagnostic, fails the gap check
        assert s.significant == 0 and s.recommended_rank == 0


def test_noise_that_passes_the_diagnostic_is_capped_by_the_unscaled_edge_count(monkeypatch):
    """When the noise looks white but shows no gap after the white count, the biwhitened tests do not get a
    second chance at alpha: the unscaled edge test (valid there) caps their count; noise that fails the
    diagnostic (a variance per sample) is not capped by it."""
    claims = lambda x, **kw: {"permutation": 3, "edge": 3}  # noqa: E731  (the biwhitened tests claiming 3)
    monkeypatch.setattr(noise, "robust_counts", claims)
    rng = np.random.default_rng(1)
    s = spectrum(pure("even-cov", rng, 120, 120))
    assert s.noise.white and s.noise.counts["white"] > s.noise.counts["edge_unscaled"] == 0
    assert s.noise.null == "robust" and s.significant == 0
    s = spectrum(pure("sample-variance", rng))
    assert not s.noise.white and s.noise.null == "robust" and s.significant == 3


@pytest.mark.parametrize("kind, scale", [("t3", 1.0), ("sample-variance", 1.0), ("ar1", 2.0)])
def test_planted_directions_at_twice_the_detection_limit_are_found_off_white_noise(kind, scale):
    # correlated noise: the limit is set by the noise along its strongest direction (AR(1) 0.6: ~2x its RMS)
    rng = np.random.default_rng(2)
    s = spectrum(pure(kind, rng) + planted(rng, 2, scale=scale))
    assert s.noise.null == "robust" and s.significant == 2


def test_a_heavy_tailed_scale_per_sample_leaves_no_false_direction_on_square_noise():
    """Multivariate t (2 df: each sample's scale heavy-tailed) at n = d: centering rows of very unequal scale
    and then rescaling them leaves a rank-one term along the row scales; re-centering with equal weights
    turned it into a direction past the BBP threshold (a false direction in 3 of these 6 draws), projecting
    the columns off the row scales does not."""
    rng = np.random.default_rng(1)
    for _ in range(6):
        x = rng.standard_normal((120, 120)) / np.sqrt(rng.chisquare(2, (120, 1)))
        s = spectrum(x)
        assert s.noise.null == "robust" and s.significant == 0, s.noise.counts


def test_white_noise_keeps_the_exact_white_null():
    rng = np.random.default_rng(3)
    s = spectrum(rng.standard_normal((N, D)) + planted(rng, 2))
    assert s.noise.null == "white" and s.noise.white and s.significant == 2
    assert s.noise.counts == {"white": 2, "edge_unscaled": 2}  # a gap after them; no permutations needed
    assert s.to_dict()["noise_null"] == "white"


def test_diagnostics_are_near_their_white_values_and_move_with_a_variance_profile():
    rng = np.random.default_rng(4)
    (rows, cols), kurt = noise.white_diagnostics(rng.standard_normal((2000, 64)))
    assert abs(rows - 1) < 0.2 and abs(cols - 1) < 0.6 and abs(kurt) < 0.05     # sd ~0.03, ~0.18, ~0.01
    (rows, cols), _ = noise.white_diagnostics(rng.standard_normal((2000, 64)) * rng.lognormal(0, 0.5, (2000, 1)))
    assert rows > 5 * cols > 5


def test_biwhitening_equalizes_row_and_column_mean_squares():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (200, 30)) * rng.uniform(0.2, 5, (200, 1)) * rng.uniform(0.2, 5, 30)  # no outliers to clip
    y = noise_robust.biwhiten(x, center=False)     # (re-centering then takes each row's share of the weighted means)
    rows, cols = (y * y).mean(1), (y * y).mean(0)
    assert np.ptp(rows) / rows.mean() < 0.05 and np.ptp(cols) / cols.mean() < 0.05
    assert np.ptp((x * x).mean(1)) / (x * x).mean() > 3                            # before: far from equal
    assert np.linalg.matrix_rank(noise_robust.biwhiten(planted(rng, 3, 200, 30, 10.0)), tol=1e-8) <= 4  # rank kept (+ centering)


def test_edge_reference_matches_dense_gaussian_matrices():
    """The bidiagonal sampler of the edge-spacing law agrees with eigenvalues of dense white matrices."""
    rng = np.random.default_rng(6)
    big, small, kmax = 80, 24, 6
    ref = noise_robust._edge_reference(big, small, kmax)
    dense = [noise_robust.spacing_ratios(np.linalg.eigvalsh((g := rng.standard_normal((big, small))).T @ g)[::-1], kmax).max()
             for _ in range(300)]
    assert stats.ks_2samp(ref, dense).pvalue > 0.01


def test_deflated_parallel_analysis_finds_an_exact_rank_behind_strong_directions():
    rng = np.random.default_rng(7)
    u = rng.standard_normal((500, 8)) * np.array([6, 4, 3, 1, 1, 1, 1, 1.0])  # 3 strong, 5 weak directions
    x = u @ np.linalg.qr(rng.standard_normal((40, 8)))[0].T + 0.05 * rng.standard_normal((500, 40))
    y = x - x.mean(0)
    lam = noise_robust._eigenvalues(y)
    assert noise_robust.permutation_count(y, lam, 0.01, 99, rng, 20) == 8
    assert noise_robust.edge_count(lam, 499, 40, 0.01, 20) == 8


def test_the_edge_test_looks_for_its_gap_only_among_the_directions_the_permutation_test_found(monkeypatch):
    """A gap deeper than the permutation count is the bulk's own: it does not count (the count used to be the
    permutation count whenever the edge test's largest gap lay beyond it: ~31 false directions on AR(1) noise)."""
    rng = np.random.default_rng(8)
    g = rng.standard_normal((400, 60))
    lam = np.linalg.eigvalsh(g.T @ g)[::-1].copy()
    lam[:20] += 40 * (lam[0] - lam[-1])                     # a gap after eigenvalue 20, deep in a scan of kmax 30
    assert noise_robust.edge_count(lam, 399, 60, 0.01, 30) == 20
    assert noise_robust.edge_count(lam, 399, 60, 0.01, 30, upto=5) == 0
    monkeypatch.setattr(noise_robust, "permutation_count", lambda *a: 5)   # the robust counts scan to it
    monkeypatch.setattr(noise_robust, "_eigenvalues", lambda y: lam)
    assert noise_robust.robust_counts(g - g.mean(0), kmax=30) == {"permutation": 5, "edge": 0}
