"""A rank recommendation from one run's spectrum, with an interval, beside the sweep's measured elbow.

`recommend(frozen, adapted)`: the shift Δ = adapted − frozen of one high-rank run has `significant`
directions above its noise floor (`noise.noise_floor`, which picks the null that applies); the
recommended rank is the fewest of them holding `energy_target` of their de-biased (above-noise)
energy (`Spectrum.recommended_rank`). Its interval resamples the samples (rows of Δ) with
replacement, recomputes the singular values and the same share with the count held fixed, and takes
the 2.5/97.5% percentiles. The capacity model's doubling elbow (the rank from which a doubling gains
less than δ points) is what the recommendation estimates when accuracy follows the captured energy:
`spectrum_runs.sweep_recommendations` puts both side by side for every sweep with a measured accuracy per rank, so a
user sees whether one run would have told them the rank the whole sweep found (within one doubling:
elbow/2 ≤ rank ≤ 2·elbow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .noise import _noise_variance


@dataclass(frozen=True)
class Recommendation:
    """rank: recommended rank; interval: (lo, hi) 95% bootstrap interval; significant: directions above noise;
    null: the noise null used; boot: bootstrap replicates."""

    rank: int
    interval: tuple[int, int]
    significant: int
    null: str
    boot: int

    def to_dict(self) -> dict:
        return {"recommended_rank": self.rank, "recommended_ci": list(self.interval), "significant": self.significant,
                "noise_null": self.null, "recommended_boot": self.boot}


def recommend(frozen, adapted=None, *, alpha: float = 0.01, energy_target: float = 0.95, n_boot: int = 50,
              rng: np.random.Generator | int | None = 0, center: bool = True) -> Recommendation:
    """The recommended rank of the shift adapted − frozen ((n, d) each; or one shift matrix) with its interval."""
    from .spectrum import _sample_rows, _shift_matrix, spectrum

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    spec = spectrum(frozen, adapted, alpha=alpha, energy_target=energy_target, center=center)
    k = spec.significant
    if k == 0:
        return Recommendation(0, (0, 0), 0, spec.noise.null, 0)
    x = _sample_rows(*_shift_matrix(frozen, adapted), center=False)
    n, d = x.shape
    big, small = max(n - 1, d), min(n - 1, d)
    ranks = []
    for _ in range(n_boot):
        rows = x[rng.integers(0, n, n)]
        rows = rows - rows.mean(axis=0) if center else rows
        lam = np.linalg.svd(rows, compute_uv=False) ** 2
        lam = lam / lam[0] if lam[0] > 0 else lam
        energy = np.cumsum(_noise_variance(lam, k, big, small)[1])
        ranks.append(int(np.searchsorted(energy / energy[-1], energy_target - 1e-12)) + 1 if energy[-1] > 0 else 0)
    lo, hi = np.quantile(ranks, [0.025, 0.975], method="inverted_cdf")
    return Recommendation(spec.recommended_rank, (int(lo), int(hi)), k, spec.noise.null, n_boot)


def within_one_doubling(rank: float | None, elbow: float | None) -> bool | None:
    """elbow/2 <= rank <= 2·elbow (None when either is unknown or the elbow is not finite)."""
    if rank is None or elbow is None or not math.isfinite(elbow):
        return None
    return elbow / 2 <= rank <= 2 * elbow
