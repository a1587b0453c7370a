"""The white null of `noise.noise_floor`: Marchenko–Pastur edge + Tracy–Widom margin (see `noise`'s docstring).

Sequential test of the top directions of a shift with i.i.d. noise (Kritchman & Nadler 2009), the
noise variance with de-biased signal energies (Benaych-Georges & Nadakuditi 2012), and TW1 itself.
Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np

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


def _unit_eigenvalues(s: np.ndarray, small: int) -> np.ndarray:
    """(small,): the squared singular values s (descending, s[0] > 0) in units of the top one, zero-padded."""
    lam = np.zeros(small)
    lam[: min(small, len(s))] = (s[:small] / s[0]) ** 2
    return lam


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
