"""Bootstrap intervals of a capacity fit (capacity_fit): parameters given a family, and the doubling
elbow with the choice of family redone in every replicate.

Replicates come from a residual bootstrap by default: the deviations of every run from the fitted
curve (pooled over ranks, rescaled by sqrt(n/(n-q)) for the q fitted parameters) are resampled onto
the fitted curve and the model refitted; "seeds" resamples whole seeds (as weights on their points).
Intervals are percentile intervals expanded to Student-t width (`expanded_tail`).

An elbow beyond the search horizon is +inf (right-censored there): it sorts above every finite value,
and an interval whose upper percentile is inf reads "beyond the horizon" (benchmarks/elbow_coverage.py
defines its coverage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import UserError
from .capacity_models import Family, doubling_elbow, fit_many

LEVEL = 0.95


def _aicc(rss: float, n: int, q: int) -> float | None:
    k = q + 1                                    # + the noise variance
    if n - k - 1 <= 0:
        return None
    return float(n * math.log(max(rss, 1e-12) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1))


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


def _replicates(fitted: np.ndarray, q: int, seeds, acc, n_boot: int, interval: str, rng: np.random.Generator):
    """Bootstrap responses Y (B, n) and weights W (B, n) or None around the curve `fitted` (n,)."""
    n = acc.size
    if interval == "seeds":
        levels = np.unique(seeds)
        draws = rng.integers(0, levels.size, (n_boot, levels.size))
        counts = (draws[:, :, None] == np.arange(levels.size)).sum(1)            # (B, S)
        return np.broadcast_to(acc, (n_boot, n)), counts[:, np.searchsorted(levels, seeds)].astype(float)
    if interval != "residual":
        raise UserError(f"interval {interval!r}: choose residual or seeds")
    resid = (acc - fitted) * math.sqrt(n / max(n - q, 1))
    return fitted + (resid - resid.mean())[rng.integers(0, n, (n_boot, n))], None


def bootstrap(family: Family, ranks, seeds, acc, *, n_boot: int = 1000, interval: str = "residual",
              rng: np.random.Generator | int | None = 0) -> Bootstrap:
    """Fit `family` to the points ranks, seeds, acc (n,) and bootstrap it (module docstring)."""
    ranks, seeds, acc = check_points(ranks, seeds, acc)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    theta, rss = fit_many(family, ranks, acc[None])
    Y, W = _replicates(family.predict(theta[0], ranks), family.n_params, seeds, acc, n_boot, interval, rng)
    boot, _ = fit_many(family, ranks, Y, W)
    return Bootstrap(family, theta[0], float(rss[0]), boot,
                     expanded_tail(interval, acc.size, family.n_params, np.unique(seeds).size))


def selection_bootstrap(boots: list[Bootstrap], weights: np.ndarray, ranks, seeds, acc, *, delta: float, lo: float,
                        hi: float, n_boot: int, interval: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The doubling elbow with the choice of family redone in every bootstrap replicate.

    Replicates are drawn around the Akaike-weighted average of the families' fitted curves (its
    residuals rescaled by sqrt(n/(n-q)) and resampled; "seeds": whole seeds resampled as weights), so
    no one family is taken as the truth; in each, every family is refitted and the one with the
    smallest AICc gives the replicate's elbow. Returns elbows (B,) and the chosen family's index (B,)
    into `boots`.
    """
    fitted = sum(w * b.family.predict(b.theta, ranks) for w, b in zip(weights, boots))
    Y, W = _replicates(fitted, max(b.family.n_params for b in boots), seeds, acc, n_boot, interval, rng)
    n = acc.size
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
