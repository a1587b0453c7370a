"""The robust null of `noise.noise_floor`: biwhitening, parallel analysis and edge spacings (see `noise`'s docstring).

No distributional assumption beyond a noise bulk: the shift is biwhitened (`biwhiten`), then counted by
column permutations (`permutation_count`) and by the spacings at the top of its spectrum (`edge_count`);
`robust_counts` gives both. Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .noise_white import _noise_variance

N_PERM = 99          # permutations of parallel analysis (the smallest count that allows p = 0.01)
SPREAD = 8           # the edge-spacing ratio's denominator spans the next SPREAD eigenvalues
_EDGE_REPS = 4000    # draws of the white reference law of the edge-spacing statistic (see `edge_count`)
_EDGE_SIZE = 256     # ... at most this many columns (see `edge_count`)
_CLIP = 4.0          # winsorize the biwhitened entries at this many robust standard deviations
_CHUNK = 8           # permuted matrices whose eigenvalues are computed together


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
    """{"permutation": k, "edge": k' <= k} for a centered (n, d) shift x, after `biwhiten`; counts <= limit."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    y = biwhiten(x)
    n, d = y.shape
    small = min(n - 1, d)
    kmax = _kmax(small) if kmax is None else kmax
    limit = small if limit is None else limit
    lam = _eigenvalues(y)
    permuted = min(permutation_count(y, lam, alpha, n_perm, rng, kmax), limit)
    # the gap is looked for among the directions the permutation test found, at the critical value of all
    # kmax: a deeper one is the bulk's own (`noise`'s docstring)
    return {"permutation": permuted,
            "edge": edge_count(lam, max(n - 1, d), small, alpha, kmax, upto=permuted)}   # <= permuted <= limit


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


def edge_count(lam: np.ndarray, big: int, small: int, alpha: float, kmax: int, upto: int | None = None) -> int:
    """The largest i <= upto (default kmax) whose spacing ratio exceeds the 1 − alpha quantile of the
    largest of kmax ratios at the top of a white noise bulk of the same size (0 if none does)."""
    upto = kmax if upto is None else min(upto, kmax)
    if upto < 1:
        return 0
    # the ratio's law barely depends on the size (0.99 quantile, kmax = 64: 0.777 at 2730 × 768, 0.788 at
    # 1000 × 128 with kmax = 32): larger matrices use one of this size. _EDGE_REPS draws: the quantile of
    # 1000 draws was exceeded by 0.8-1.4% of 20,000 fresh ones depending on the size (at 499 × 64: 1.4%,
    # which showed as a 1.8% false-positive rate on white noise); that of 4000, by 0.9-1.25% at the same sizes
    ref = min(small, _EDGE_SIZE)
    critical = float(np.quantile(_edge_reference(max(ref, round(big * ref / small)), ref, kmax), 1 - alpha,
                                 method="higher"))
    above = np.nonzero(spacing_ratios(lam, kmax)[:upto] > critical)[0]
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
