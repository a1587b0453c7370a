"""A rank recommendation from one run's spectrum, with an interval, beside the sweep's measured elbow.

`recommend(frozen, adapted)`: the shift Δ = adapted − frozen of one high-rank run has `significant`
directions above its noise floor (`noise.noise_floor`, which picks the null that applies), with
de-biased (above-noise) energies. Two rules pick the rank from them:

- `gain` known (the run's accuracy minus head-only's, in points): the sweep's own elbow rule on the
  spectral capacity model acc(r) = A − gain·T(r), T(r) the share of that energy beyond the top r
  directions and head-only as rank 0 (`doubling_rank`): the smallest rank from which every doubling
  gains less than `delta` points. It is the elbow the sweep measures when a rank-r adapter captures
  the top r directions of the shift, from one run and the head-only baseline (a linear probe on the
  frozen features);
- else the fewest directions holding `energy_target` of that energy (`Spectrum.recommended_rank`),
  which ignores how much accuracy the remaining share is worth.

Under the robust null the count is the edge-spacing test's, which guards against correlated noise by
looking for a gap after the last direction; a shift spread over many comparable directions has none,
and the count is 0. One matrix cannot tell such a shift from correlated noise (`noise`), but a gain of
`delta` points or more says the adapter built something, so there the doubling rule reads the robust
null's other count, parallel analysis (a vit_micro every-block run 16 points over head-only: edge
count 0, parallel analysis 32; recommended rank 0 before, 19 with it, for a planted k* = 16). Where
the edge test finds a gap, its count stands: the directions past the gap are the bulk's.

The interval resamples the samples (rows of Δ) with replacement, recomputes the singular values and
the same rule with the count held fixed, and takes the 2.5/97.5% percentiles.
`spectrum_runs.sweep_recommendations` puts the recommendation beside the measured elbow for every
sweep with a measured accuracy per rank, so a user sees whether one run would have told them the
rank the whole sweep found (within one doubling: elbow/2 ≤ rank ≤ 2·elbow).
The shift is read at the output: with adapters in several blocks it has the rank they build together, and
how that divides among the blocks is not in its spectrum (each block can need less: README, planted validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .capacity_models import DELTA
from .noise_white import _noise_variance, _unit_eigenvalues


@dataclass(frozen=True)
class Recommendation:
    """rank: recommended rank; interval: (lo, hi) 95% bootstrap interval; significant: directions above noise;
    null: the noise null used; boot: bootstrap replicates; rule: "doubling" (from the accuracy gain) or "energy";
    directions: how many directions the rule read (`significant`, or parallel analysis's count: module docstring)."""

    rank: int
    interval: tuple[int, int]
    significant: int
    null: str
    boot: int
    rule: str = "energy"
    directions: int = 0

    def to_dict(self) -> dict:
        return {"recommended_rank": self.rank, "recommended_ci": list(self.interval), "significant": self.significant,
                "noise_null": self.null, "recommended_boot": self.boot, "recommended_rule": self.rule,
                "recommended_directions": self.directions}


def doubling_rank(energy, gain: float, delta: float = DELTA) -> int:
    """The smallest rank r >= 1 from which every doubling gains less than `delta` points when accuracy is
    acc(r) = A − gain·T(r): gain·(E(min(2r', m)) − E(r')) < delta for every r' >= r, E(r) the share of
    `energy` (m,) (non-negative, any order: sorted descending here) in its top r directions.
    0 when `energy` is empty or all zero. Ranks past the spectrum gain nothing."""
    e = np.sort(np.asarray(energy, float).ravel())[::-1]
    if np.any(e < 0) or not np.all(np.isfinite(e)) or not math.isfinite(gain):
        raise UserError("doubling_rank needs finite non-negative energies and a finite gain")
    if e.size == 0 or not e.sum() > 0:
        return 0
    share = np.concatenate([[0.0], np.cumsum(e) / e.sum()])
    r = np.arange(1, e.size + 1)
    big = np.nonzero(gain * (share[np.minimum(2 * r, e.size)] - share[r]) >= delta)[0]
    return int(r[big[-1]] + 1) if big.size else 1


def recommend(frozen, adapted=None, *, alpha: float = 0.01, energy_target: float = 0.95, n_boot: int = 50,
              rng: np.random.Generator | int | None = 0, center: bool = True, gain: float | None = None,
              delta: float = DELTA) -> Recommendation:
    """The recommended rank of the shift adapted − frozen ((n, d) each; or one shift matrix) with its interval.

    gain: the run's accuracy minus head-only's (points); with it the rank follows `doubling_rank` at `delta`,
    without it the `energy_target` share."""
    from .spectrum import _sample_rows, _shift_matrix, energy_rank, spectrum

    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    spec = spectrum(frozen, adapted, alpha=alpha, energy_target=energy_target, center=center)
    k, rule = spec.significant, "energy" if gain is None else "doubling"
    if k == 0 and gain is not None and gain >= delta and spec.noise.null == "robust":   # no gap (docstring)
        k = spec.noise.counts.get("permutation", 0)
    if k == 0:
        return Recommendation(0, (0, 0), 0, spec.noise.null, 0, rule, 0)

    def pick(signal_energy: np.ndarray) -> int:
        return energy_rank(signal_energy, energy_target) if gain is None else doubling_rank(signal_energy, gain, delta)

    x = _sample_rows(*_shift_matrix(frozen, adapted), center=False)
    n, d = x.shape
    big, small = max(n - 1, d), min(n - 1, d)
    ranks = []
    for _ in range(n_boot):
        rows = x[rng.integers(0, n, n)]
        rows = rows - rows.mean(axis=0) if center else rows
        lam = np.linalg.svd(rows, compute_uv=False) ** 2
        lam = lam / lam[0] if lam[0] > 0 else lam
        ranks.append(pick(_noise_variance(lam, k, big, small)[1]))
    lo, hi = np.quantile(ranks, [0.025, 0.975], method="inverted_cdf")
    dof = spec.n - 1 if center else spec.n        # the noise floor's de-biasing, of the top k directions
    lam = _unit_eigenvalues(spec.singular_values, min(dof, spec.d))
    rank = spec.recommended_rank if gain is None else pick(_noise_variance(lam, k, max(dof, spec.d), lam.size)[1])
    return Recommendation(rank, (int(lo), int(hi)), spec.significant, spec.noise.null, n_boot, rule, k)


def within_one_doubling(rank: float | None, elbow: float | None) -> bool | None:
    """elbow/2 <= rank <= 2·elbow (None when either is unknown or the elbow is not finite)."""
    if rank is None or elbow is None or not math.isfinite(elbow):
        return None
    return elbow / 2 <= rank <= 2 * elbow
