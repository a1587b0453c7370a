"""Aggregates of a vs b across (dataset, backbone) pairs: hierarchical and stratified bootstraps, the
interquartile mean, the probability of improvement, a mixed-effects fit, and `aggregate` gathering them.

Imports no torch and no plotting.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def _resample(groups: list[np.ndarray], picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, m, n_max) values: for each drawn group picks[b, j], a with-replacement resample of its
    values, NaN-padded. groups: arrays (n_i,); picks: (B, m) group indices."""
    counts = np.array([g.size for g in groups])
    table = np.full((len(groups), counts.max()), np.nan)
    for i, g in enumerate(groups):
        table[i, :g.size] = g
    cnt = counts[picks][..., None]                                               # (B, m, 1)
    idx = (rng.random(picks.shape + (table.shape[1],)) * cnt).astype(int)        # (B, m, n_max)
    vals = table[picks[..., None], idx]
    vals[np.arange(table.shape[1]) >= cnt] = np.nan
    return vals


def hierarchical_bootstrap(units: list[tuple], *, rng: np.random.Generator, n_boot: int = 2000,
                           resample_pairs: bool = True) -> np.ndarray:
    """Bootstrap distribution (n_boot,) of the mean over pairs of each pair's mean difference.

    units: m tuples (x, y, paired) with x (n_a,), y (n_b,). Each replicate draws m pairs with
    replacement (if resample_pairs), then seeds within each drawn pair (the paired differences
    together, or each method's seeds apart when unpaired).
    """
    m = len(units)
    picks = rng.integers(0, m, size=(n_boot, m)) if resample_pairs else np.tile(np.arange(m), (n_boot, 1))
    gx = [np.asarray(x, float) - np.asarray(y, float) if p else np.asarray(x, float) for x, y, p in units]
    gy = [np.zeros(1) if p else np.asarray(y, float) for x, y, p in units]
    diff = np.nanmean(_resample(gx, picks, rng), axis=-1) - np.nanmean(_resample(gy, picks, rng), axis=-1)
    return diff.mean(axis=1)


def iqm(values) -> float:
    """Interquartile mean of values (n,): scipy.stats.trim_mean(values, 0.25)."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def _iqm_rows(v: np.ndarray) -> np.ndarray:
    """IQM of each row of v (B, K), ignoring NaN; same trimming as trim_mean(row, 0.25)."""
    s = np.sort(v, axis=1)  # NaN last
    c = (~np.isnan(v)).sum(axis=1)
    lo = (0.25 * c).astype(int)
    j = np.arange(v.shape[1])
    keep = (j >= lo[:, None]) & (j < (c - lo)[:, None])
    return np.where(keep, s, 0.0).sum(axis=1) / keep.sum(axis=1)


def iqm_bootstrap(diffs: list[np.ndarray], *, rng: np.random.Generator, n_boot: int = 2000) -> np.ndarray:
    """Stratified bootstrap (n_boot,) of the IQM of all per-seed differences: diffs are m arrays
    (n_i,) of paired differences; seeds are resampled within each pair (the strata)."""
    picks = np.tile(np.arange(len(diffs)), (n_boot, 1))
    return _iqm_rows(_resample([np.asarray(d, float) for d in diffs], picks, rng).reshape(n_boot, -1))


def probability_of_improvement(units: list[tuple]) -> float:
    """P(X_a > X_b) + P(X_a = X_b) / 2 over all seed combinations of a pair, averaged over pairs."""
    return float(np.mean([_poi(np.asarray(x, float)[None], np.asarray(y, float)[None])[0] for x, y, _ in units]))


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x (B, n_a), y (B, n_b) -> (B,) probability that a draw of x beats a draw of y (ties 1/2)."""
    gt = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    eq = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
    return gt + 0.5 * eq


def poi_bootstrap(units: list[tuple], *, rng: np.random.Generator, n_boot: int = 2000) -> np.ndarray:
    """Stratified bootstrap (n_boot,) of `probability_of_improvement` (seeds resampled per pair and method)."""
    out = np.zeros(n_boot)
    for x, y, _ in units:
        x, y = np.asarray(x, float), np.asarray(y, float)
        out += _poi(x[rng.integers(0, x.size, (n_boot, x.size))], y[rng.integers(0, y.size, (n_boot, y.size))])
    return out / len(units)


def mixed_effects(units: list[tuple], pair_names: list[str]) -> dict:
    """statsmodels MixedLM, metric ~ method + (1 | pair), REML: the fixed effect of a over b.

    units: m tuples (x, y, paired). Returns {"coef", "se", "p", "ci", "converged", "warning"}.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM

    endog = np.concatenate([np.concatenate([x, y]) for x, y, _ in units]).astype(float)
    is_a = np.concatenate([np.r_[np.ones(len(x)), np.zeros(len(y))] for x, y, _ in units])
    groups = np.concatenate([[name] * (len(x) + len(y)) for (x, y, _), name in zip(units, pair_names)])
    exog = np.column_stack([np.ones(endog.size), is_a])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = MixedLM(endog, exog, groups=groups).fit(reml=True)
        except (np.linalg.LinAlgError, ValueError) as e:
            return {"coef": None, "se": None, "p": None, "ci": None, "converged": False, "warning": str(e)}
    note = "; ".join(sorted({str(w.message).splitlines()[0] for w in caught}))
    ci = res.conf_int()[1]
    return {"coef": float(res.fe_params[1]), "se": float(res.bse_fe[1]), "p": float(res.pvalues[1]),
            "ci": (float(ci[0]), float(ci[1])), "converged": bool(res.converged), "warning": note or None}


@dataclass(frozen=True)
class Aggregate:
    """a vs b across every pair where both were run (differences a - b, in metric points)."""
    a: str
    b: str
    n_pairs: int
    mean_diff: float                 # mean over pairs of each pair's mean difference
    ci: tuple                        # hierarchical bootstrap (pairs, then seeds)
    iqm: float | None                # IQM of all per-seed paired differences (None if any pair unpaired)
    iqm_ci: tuple | None             # stratified bootstrap (seeds within pairs)
    prob_improvement: float          # P(a > b), averaged over pairs
    prob_improvement_ci: tuple
    wins: int                        # pairs with mean difference > tie_margin
    ties: int
    losses: int
    p_sign: float                    # two-sided sign test of wins vs losses
    mixed: dict | None = None        # MixedLM metric ~ method + (1 | pair), if asked for

    def to_dict(self) -> dict:
        return asdict(self)


def aggregate(units: list[tuple], pair_names: list[str], a: str, b: str, *, rng: np.random.Generator,
              n_boot: int = 2000, level: float = 0.95, tie_margin: float = 0.0, mixed: bool = False) -> Aggregate:
    """Aggregates of a vs b from m units (x (n_a,), y (n_b,), paired), one per pair."""
    q = ((1 - level) / 2, 1 - (1 - level) / 2)
    diffs = np.array([np.mean(x) - np.mean(y) for x, y, _ in units])
    ci = tuple(float(v) for v in np.quantile(hierarchical_bootstrap(units, rng=rng, n_boot=n_boot), q))
    paired = all(p for _, _, p in units)
    if paired:
        d = [np.asarray(x, float) - np.asarray(y, float) for x, y, _ in units]
        iqm_value = iqm(np.concatenate(d))
        iqm_ci = tuple(float(v) for v in np.quantile(iqm_bootstrap(d, rng=rng, n_boot=n_boot), q))
    else:
        iqm_value, iqm_ci = None, None
    poi_ci = tuple(float(v) for v in np.quantile(poi_bootstrap(units, rng=rng, n_boot=n_boot), q))
    wins, losses = int((diffs > tie_margin).sum()), int((diffs < -tie_margin).sum())
    p_sign = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    return Aggregate(a, b, len(units), float(diffs.mean()), ci, iqm_value, iqm_ci,
                     probability_of_improvement(units), poi_ci, wins, len(units) - wins - losses, losses,
                     p_sign, mixed_effects(units, pair_names) if mixed and len(units) >= 2 else None)
