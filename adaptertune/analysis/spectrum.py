"""Spectra of the task feature shift ΔH = H_adapted − H_frozen: energy ranks, effective rank, noise floor.

`spectrum(frozen, adapted)` takes two (n, d) feature matrices (or one shift matrix) and returns a
frozen `Spectrum`: the singular values of the shift and what follows from them — energy fractions,
the tail energy τ(r) = Σ_{i>r} σi² of the capacity model (DESIGN.md), the effective rank
(Roy & Vetterli 2007), participation ratio, stable rank, the rank holding 90/95/99% of the energy,
the number of *significant* directions (those standing above a finite-sample noise floor) and a
recommended rank.

The noise floor (`noise.noise_floor`) decides which directions stand above the shift's noise: the
Marchenko–Pastur / Tracy–Widom test where the noise looks white (exact, rotation invariant), a
robust null where it does not — biwhitening, then the smaller of a parallel-analysis (column
permutation) count and an edge-spacing count — and says per spectrum which null it used
(`NoiseFloor.null`). On white, heavy-tailed, heteroscedastic and correlated pure noise (with no
covariance direction standing apart) the count was 0 in all but ≤ 1% of draws at α = 0.01
(benchmarks/noise_floor.py, 500 × 64). A direction weaker than θ ≈ σ·(NP)^¼ is
invisible to any method at that n and d (the BBP transition).

Pure numpy/scipy; no torch, no files. `spectrum_runs.analyze_runs` applies this to run directories
(`adaptertune analyze spectrum RUNS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..errors import UserError
from .noise import NoiseFloor, noise_floor  # noqa: F401  (re-exported)
from .noise_white import tw1_cdf, tw1_quantile  # noqa: F401  (re-exported)

LEVELS = (0.9, 0.95, 0.99)  # energy shares reported as rank90 / rank95 / rank99
_REFINE = 1e-5  # eigenvalues of the Gram below this share of the top one are recomputed (see _singular_values)
_EPS = np.finfo(np.float64).eps
_ROBUST_ENTRIES = 1 << 21  # the robust noise null sees at most this many entries of Δ (a row subset; 16 MB)
_CHUNK = 1 << 22  # float64 elements per block of the shift (32 MB): few BLAS calls, no (n, d) copy


# -- the spectrum of one shift ----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Spectrum:
    """The spectrum of one (n, d) shift matrix; every derived measure is a property.

    singular_values: (m,) float64, descending, m = min(n, d) (one exact zero when centered and n <= d)
    significant: directions above the noise floor (`noise`); recommended_rank: see `spectrum()`.
    """

    singular_values: np.ndarray
    n: int
    d: int
    centered: bool
    significant: int
    recommended_rank: int
    energy_target: float
    noise: NoiseFloor

    @property
    def total_energy(self) -> float:
        """‖Δ‖_F² = Σ σi² (= τ(0))."""
        return float(self.tail_energy[0])

    def _unit(self) -> np.ndarray:
        """(m,) singular values over the largest (zeros for a zero shift): ratios that cannot overflow."""
        s = self.singular_values
        return s / s[0] if len(s) and s[0] > 0 else np.zeros_like(s)

    @property
    def energy(self) -> np.ndarray:
        """(m,) σi² / Σσ²; all zeros for a zero shift."""
        lam = self._unit() ** 2
        return lam / lam.sum() if lam.sum() > 0 else lam

    @property
    def cumulative(self) -> np.ndarray:
        """(m,) share of the energy in the top r directions, r = 1..m (summed from the tail: no cancellation)."""
        lam = self._unit() ** 2
        if lam.sum() <= 0:
            return lam
        return 1.0 - np.append(np.cumsum(lam[::-1])[::-1][1:], 0.0) / lam.sum()

    @property
    def tail_energy(self) -> np.ndarray:
        """(m+1,) τ(r) = Σ_{i>r} σi² for r = 0..m: τ(0) = ‖Δ‖_F², τ(m) = 0 (summed from the tail: no cancellation)."""
        lam = self.singular_values ** 2
        return np.append(np.cumsum(lam[::-1])[::-1], 0.0)

    @property
    def effective_rank(self) -> float:
        """Roy–Vetterli effective rank exp(H(p)), p_i = σi / Σσ (L1-normalized singular values); 0 for a zero shift."""
        s = self._unit()
        if s.sum() <= 0:
            return 0.0
        p = s[s > 0] / s.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    @property
    def participation_ratio(self) -> float:
        """(Σσi²)² / Σσi⁴ — the number of equally strong directions with the same energy spread."""
        lam = self._unit() ** 2
        return float(lam.sum() ** 2 / (lam ** 2).sum()) if lam.sum() > 0 else 0.0

    @property
    def stable_rank(self) -> float:
        """‖Δ‖_F² / ‖Δ‖_2² = Σσi² / σ1²."""
        return float((self._unit() ** 2).sum())

    @property
    def rank_at(self) -> dict[float, int]:
        """{0.9: r, 0.95: r, 0.99: r}: the fewest directions holding that share of the energy (0 for a zero shift)."""
        return {level: self.rank_for(level) for level in LEVELS}

    def rank_for(self, level: float) -> int:
        """The smallest r whose top r directions hold at least `level` of the energy."""
        if not self._unit().any():
            return 0
        r = int(np.searchsorted(self.cumulative, level - 1e-12, side="left")) + 1
        return min(r, len(self.singular_values))

    def to_dict(self) -> dict:
        """JSON-safe summary; the singular values are the only array."""
        return {
            "n": self.n, "d": self.d, "centered": self.centered,
            "total_energy": self.total_energy,
            "effective_rank": self.effective_rank,
            "participation_ratio": self.participation_ratio,
            "stable_rank": self.stable_rank,
            **{f"rank{round(100 * k)}": v for k, v in self.rank_at.items()},
            "significant": self.significant,
            "recommended_rank": self.recommended_rank,
            "energy_target": self.energy_target,
            **{k: v for k, v in self.noise.to_dict().items() if k != "significant"},
            "singular_values": [float(v) for v in self.singular_values],
        }


def spectrum(frozen, adapted=None, *, center: bool = True, alpha: float = 0.01,
             energy_target: float = 0.95) -> Spectrum:
    """The spectrum of the shift Δ = adapted − frozen (or of `frozen` itself when `adapted` is None).

    frozen, adapted: (n, d) arrays (any real dtype; float32 features are differenced in float64).
    center: subtract the mean shift over the n samples first (default). The mean is one constant
        offset that the adapter's up-projection bias (and the head's bias) absorbs without using
        rank, so the rank question is about the centered shift; with `center=False` the offset
        counts as a direction. Centering costs one degree of freedom: the noise floor uses n − 1.
    alpha: family-wise false-alarm level of the noise floor's tests (see `noise.noise_floor`).
    energy_target: the recommended rank is the fewest significant directions that hold this share
        of the de-biased (above-noise) energy of all significant directions; 0 when none is
        significant — the shift is then indistinguishable from noise at this n and d.

    A zero shift gives singular values of zero and 0 for every rank and count. NaN/inf input, a
    shape mismatch or an empty matrix raise UserError. Inputs are never modified nor copied
    whole. Cost: one float64 Gram matrix of the smaller side, built block by block, and its
    eigenvalues (50,000 × 768: ~0.5 s on two idle cores; benchmarks/spectrum_speed.py), with the
    directions weaker than 0.3% of the top one recomputed from the matrix itself, so the singular
    values agree with a full SVD to ~1e-9 relative or better.
    """
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < energy_target <= 1:
        raise UserError(f"energy_target must be in (0, 1], got {energy_target}")
    first, second = _shift_matrix(frozen, adapted)
    n, d = first.shape
    s, resolution = _singular_values(first, second, center)
    floor = noise_floor(s, n - 1 if center else n, d, alpha=alpha, resolution=resolution,
                        matrix=_sample_rows(first, second, center))
    return Spectrum(singular_values=_readonly(s), n=n, d=d, centered=center,
                    significant=floor.significant,
                    recommended_rank=_recommended(floor.signal, energy_target),
                    energy_target=energy_target, noise=floor)


def _sample_rows(first: np.ndarray, second: np.ndarray | None, center: bool) -> np.ndarray:
    """Δ (centered if asked) as one float64 matrix for the noise floor's diagnostic and robust null; a
    seeded random subset of _ROBUST_ENTRIES / d rows when the whole would be larger."""
    n, d = first.shape
    keep = max(_ROBUST_ENTRIES // d, min(n, 2 * d))
    rows = slice(None) if n <= keep else np.sort(np.random.default_rng(0).choice(n, keep, replace=False))
    x = np.array(first[rows], dtype=np.float64) if second is None else np.subtract(second[rows], first[rows],
                                                                                 dtype=np.float64)
    return x - x.mean(axis=0) if center else x


def energy_rank(energy: np.ndarray, target: float) -> int:
    """The fewest of `energy` (descending, non-negative) holding `target` of their sum; 0 when it is zero."""
    total = np.cumsum(energy)
    if total.size == 0 or not total[-1] > 0:
        return 0
    return int(np.searchsorted(total / total[-1], target - 1e-12, side="left")) + 1


def _recommended(signal: np.ndarray, target: float) -> int:
    return energy_rank((signal / signal.max()) ** 2, target) if len(signal) and signal.max() > 0 else 0


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or 0 in x.shape:
        raise UserError(f"spectrum: {name} must be a non-empty (n, d) matrix, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"spectrum: {name} must be a real numeric array, got dtype {x.dtype}")
    return x


def _shift_matrix(frozen, adapted) -> tuple[np.ndarray, np.ndarray | None]:
    """The validated inputs: (first, second) with Δ = second − first, or (Δ, None)."""
    first = _matrix(frozen, "shift" if adapted is None else "frozen")
    if adapted is None:
        return first, None
    second = _matrix(adapted, "adapted")
    if second.shape != first.shape:
        raise UserError(f"spectrum: frozen {first.shape} and adapted {second.shape} differ in shape")
    return first, second


def _chunks(first: np.ndarray, second: np.ndarray | None, axis: int):
    """Yield (index, block): float64 blocks of Δ (row blocks for axis 0, column blocks for 1), ~32 MB each.

    Δ is never held whole: no (n, d) float64 copy of 50,000 × 768 features (300 MB) is made.
    """
    n, d = first.shape
    length, width = (n, d) if axis == 0 else (d, n)
    step = max(1, _CHUNK // width)
    for i in range(0, length, step):
        idx = (slice(i, i + step), slice(None)) if axis == 0 else (slice(None), slice(i, i + step))
        if second is None:
            yield idx, np.array(first[idx], dtype=np.float64)
        else:
            yield idx, np.subtract(second[idx], first[idx], dtype=np.float64)


def _singular_values(first: np.ndarray, second: np.ndarray | None, center: bool) -> tuple[np.ndarray, float]:
    """Singular values of Δ (centered over rows if asked), descending, shape (min(n, d),), and the
    input's resolution: no direction below it can be told from the rounding of the inputs.

    Resolution: each input entry x carries a rounding error of at most ε|x|/2 (ε of its dtype; 0
    for integers), so the error matrix E of Δ = adapted − frozen has ‖E‖₂ ≤ ‖E‖_F ≤
    ε·‖[frozen, adapted]‖_F / √2 (centering cannot increase it). Without it the float32 features of
    a rank-1 adapter on vit_nano showed 21 "directions": rounding errors scale with the features.

    Route: the float64 Gram matrix of the smaller side, G = ΔᵀΔ (or ΔΔᵀ), accumulated block by
    block, and its eigenvalues. Squaring loses relative accuracy for directions far below the top
    one (error ≈ ε·λ1/λi), so eigenvalues below _REFINE·λ1 are replaced by the singular values of
    Δ·V, V their eigenvectors (Rayleigh–Ritz on the matrix itself: the error becomes ≈ ε·σ1/σi, as
    for an SVD). Extreme magnitudes are handled by an exact power-of-two rescaling. Raises
    UserError on NaN/inf.
    """
    n, d = first.shape
    axis = 0 if n >= d else 1  # blocks along the long side; the Gram is m × m, m = min(n, d)
    inputs = [first] if second is None else [first, second]
    eps = max((np.finfo(x.dtype).eps if np.issubdtype(x.dtype, np.floating) else 0.0) for x in inputs)
    total, top, squares = np.zeros(d), 0.0, 0.0
    for idx, block in _chunks(first, second, axis):  # pass 1: column sums (for the mean), magnitude, norms
        total[idx[1]] += block.sum(axis=0)
        top = max(top, float(block.max()), -float(block.min()))
        if eps > _EPS:  # rounding of the inputs is above float64's: their norm sets the resolution
            squares += sum(float(np.square(x[idx], dtype=np.float64).sum()) for x in inputs)
    if not (np.isfinite(total).all() and math.isfinite(top)):
        _raise_nonfinite({"shift": first} if second is None else {"frozen": first, "adapted": second})
    resolution = eps * math.sqrt(squares / 2) if math.isfinite(squares) else math.inf
    if top == 0:
        return np.zeros(min(n, d)), resolution
    mean = total / n if center else np.zeros(d)
    scale = 1.0 if 2.0 ** -400 < top < 2.0 ** 400 else 2.0 ** math.floor(math.log2(top))  # squares stay finite

    def tall_blocks():  # (index, rows of the tall matrix A = Δ or Δᵀ), centered and scaled
        for idx, block in _chunks(first, second, axis):
            block -= mean[idx[1]]
            if scale != 1.0:
                block /= scale
            yield idx[axis], (block if axis == 0 else block.T)

    m = min(n, d)
    gram = np.zeros((m, m))
    for _, rows in tall_blocks():  # pass 2: the Gram matrix
        gram += rows.T @ rows
    lam = np.clip(scipy.linalg.eigh(gram, eigvals_only=True, driver="evd")[::-1], 0.0, None)
    s = np.sqrt(lam)
    weak = int((lam < _REFINE * lam[0]).sum())
    if weak:  # pass 3, only when some directions are weak: Rayleigh–Ritz on Δ itself
        _, vecs = scipy.linalg.eigh(gram, subset_by_index=[0, weak - 1], driver="evr")
        projected = np.empty((max(n, d), weak))
        for idx, rows in tall_blocks():
            projected[idx] = rows @ vecs
        s[m - weak:] = scipy.linalg.svdvals(projected)
        s = np.sort(s)[::-1]
    return s * scale, resolution


def _raise_nonfinite(named: dict) -> None:
    for name, x in named.items():
        x = np.asarray(x, dtype=np.float64)
        bad = int(x.size - np.isfinite(x).sum())
        if bad:
            raise UserError(f"spectrum: {name} has {bad} NaN/inf entries of {x.size}; features must be finite")
    raise UserError("spectrum: the shift overflows float64; features must be finite and below ~1e300")


# -- directions the seeds share ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Shared:
    """Directions of a shift that runs differing only in their seed reproduce (see `shared_directions`).

    count: directions whose intraclass correlation across seeds is significantly above `icc`
    icc: (m,) the estimated intraclass correlation along each tested direction (strongest first)
    p: (m,) one-sided p-values of H0: ICC <= `icc` (F-test, McGraw & Wong 1996)
    seeds, rows: replicates and the held-out samples the test used
    """

    count: int
    icc: np.ndarray
    p: np.ndarray
    threshold: float
    alpha: float
    seeds: int
    rows: int

    def to_dict(self) -> dict:
        return {"shared": self.count, "shared_icc": self.threshold, "shared_alpha": self.alpha,
                "shared_seeds": self.seeds, "shared_rows": self.rows, "icc": [float(v) for v in self.icc],
                "icc_top": " ".join(f"{v:.2f}" for v in self.icc[:self.count + 3])}


def shared_directions(shifts, *, icc: float = 0.5, alpha: float = 0.01) -> Shared:
    """How many directions of the shift the seeds share, beyond run-to-run variation.

    shifts: (S, n, d), S >= 2 shifts of one configuration trained with different seeds, on the same
    n samples (rows i.i.d. draws). A learned shift is a deterministic function of the input, so the
    white-noise floor of `spectrum` counts every direction an adapter uses (a rank-32 adapter: 32);
    what varies is the training run. Along a direction v, each sample i has S replicates Δ_s[i]·v;
    their intraclass correlation (one-way random effects, samples as subjects) is the share of the
    variance the seeds agree on. A direction counts when that share is significantly above `icc`
    (default 0.5: the shared part outweighs the seed-specific part), one-sided at alpha / m for the
    m directions tested (Bonferroni). To keep the choice of directions from biasing the test, they
    are the principal directions of the seed-mean shift on the even rows, tested on the odd rows.
    Each shift is centered over samples first.
    """
    x = np.asarray(shifts, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 2 or x.shape[1] < 8 or not np.isfinite(x).all():
        raise UserError(f"shared directions need >= 2 finite (n, d) shifts with n >= 8, got shape {x.shape}")
    if not (0 <= icc < 1 and 0 < alpha < 1):
        raise UserError(f"icc must be in [0, 1) and alpha in (0, 1), got {icc}, {alpha}")
    from scipy import stats

    x = x - x.mean(axis=1, keepdims=True)
    seeds, fit, test = x.shape[0], x[:, 0::2], x[:, 1::2]
    _, s, vt = np.linalg.svd(fit.mean(axis=0), full_matrices=False)
    keep = s > (s[0] if s.size else 0) * max(fit.shape[1:]) * _EPS * 16
    y = np.einsum("snd,md->snm", test, vt[keep])                  # (S, rows, m)
    rows = y.shape[1]
    mean = y.mean(axis=0)
    ms_between = seeds * ((mean - mean.mean(axis=0)) ** 2).sum(axis=0) / (rows - 1)
    ms_within = ((y - mean) ** 2).sum(axis=(0, 1)) / (rows * (seeds - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(ms_within > 0, ms_between / ms_within, np.inf)
        est = np.where(np.isfinite(f), (f - 1) / (f + seeds - 1), 1.0)
    p = stats.f.sf(f * (1 - icc) / (1 + (seeds - 1) * icc), rows - 1, rows * (seeds - 1))
    count = int((p < alpha / max(len(p), 1)).sum())
    return Shared(count, est, p, icc, alpha, seeds, rows)
