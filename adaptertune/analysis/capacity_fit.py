"""The capacity model fitted to one rank sweep: AICc over the families (capacity_models), bootstrap
intervals, the elbow with its interval, lack of fit, and the trend tests (capacity_trends) beside them
(no run directories, no files; `capacity.py` is the command).

The theory (analysis/theory.py) says accuracy(r) = 100 - e_inf - a*tau(r)/tau(0) - b*p(r)/n: it rises
with rank while the approximation term dominates and saturates as the spectrum's tail flattens.
The families (power, exp, flat, spectral) and their vectorised constrained least squares are in
capacity_models; every point (rank, seed, accuracy) is a replicate.

Intervals (95%) come from a bootstrap (capacity_intervals): residuals by default — the deviations
of every run from the fitted curve resampled onto it. Why not resample seeds: with the usual 3 seeds
a seed bootstrap has 10 distinct resamples and shrinks the variance by 2/3 - its 95% intervals
covered the truth ~75% of the time in simulation (~90% even with 10 seeds), against ~95% for the
residual bootstrap (tests/test_capacity.py). The price is an assumption: run-to-run noise is
exchangeable across ranks (no seed effect shared by all ranks of a seed). `interval="seeds"`
resamples whole seeds for many seeds and correlated noise. The best family is chosen by AICc;
parameter intervals are given the family; the elbow's interval carries the uncertainty of that
choice (the family is chosen again in every replicate, and how often each was chosen is reported).

The elbow is the smallest rank from which every further doubling is predicted to gain less than
delta points, searched from the smallest measured rank to `horizon` x the largest (inf: not reached);
beside it, Kneedle (Satopaa et al. 2011) on the fitted curve over log2(rank) (none when the curve
rises less than delta over the measured ranks; being scale-free, it finds a knee in any concave
curve, so read it beside diminishing_p). Trend tests:
monotone_p (Page's L test, seeds as blocks; Kendall's tau when seeds do not cover every rank),
diminishing_p (one-sided t-test that the quadratic term in log2(rank) is negative, seed fixed
effects), decline_p (one-sided t-test that accuracy falls over the upper half of the ranks).
Every fit also gets a lack-of-fit F-test against the rank means (the seeds' scatter as pure error),
and the same doubling rule is applied to the measured means without a curve (`elbow_means`): when
the best curve is rejected the two can disagree, and a note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..errors import UserError
from ..runs import _plain as plain   # JSON-safe: arrays to lists, NaN/inf to None
# Re-exported too (noqa): the public names of the models and trends live on here for their callers.
from .capacity_models import (_CURVE, _last_true, DELTA, FAMILIES, HORIZON, Family, SpectrumPrediction,  # noqa: F401
                              check_tail, doubling_elbow, fit_many, kneedle, kneedle_rank, make_family,  # noqa: F401
                              normalized_tail, predict_from_spectrum, rank_grid)  # noqa: F401
from .capacity_intervals import (LEVEL, Bootstrap, _aicc, _interval, bootstrap, check_points,  # noqa: F401
                                 expanded_tail, selection_bootstrap)  # noqa: F401
from .capacity_trends import Trends, trend_tests  # noqa: F401
ALPHA_TEST = 0.05    # significance level behind the notes


# -- one sweep ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ModelFit:
    """One family fitted to a sweep. theta, lo, hi: (q,) estimates and 95% bounds in `names` order."""

    family: Family
    theta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    rss: float
    aicc: float | None          # None when n <= q + 2 (AICc undefined)
    r2: float                   # 1 - RSS/TSS over all points
    loo_rmse: float | None      # leave-one-rank-out RMSE of the rank means (points); None under 4 ranks
    weight: float | None = None  # Akaike weight among the families compared
    lack_of_fit_p: float | None = None  # F-test of the curve against the rank means (`lack_of_fit_p`)

    @property
    def name(self) -> str:
        return self.family.name

    def params(self) -> dict[str, list[float]]:
        """name -> [estimate, lo, hi]."""
        return {k: [float(t), float(a), float(b)]
                for k, t, a, b in zip(self.family.names, self.theta, self.lo, self.hi)}

    def to_dict(self) -> dict:
        return plain({"model": self.name, "params": self.params(), "rss": self.rss, "aicc": self.aicc,
                      "akaike_weight": self.weight, "r2": self.r2, "loo_rmse": self.loo_rmse,
                      "lack_of_fit_p": self.lack_of_fit_p})


@dataclass(frozen=True, eq=False)
class SweepFit:
    """Everything estimated from one sweep's points.

    ranks, seeds, acc: (n,) the points; levels (k,) distinct ranks with means, ci_lo, ci_hi (k,)
    (t-interval over seeds; NaN with one seed). fits: family name -> ModelFit, best first by AICc.
    elbow, elbow_ci: the doubling elbow (inf: beyond the horizon) and its 95% interval;
    kneedle, kneedle_ci: Kneedle on the best fitted curve (NaN: no knee); kneedle_data: on the means.
    elbow_means, elbow_means_ci: the doubling rule on the measured means, no curve (`means_elbow`;
    inf: not reached), and its 95% interval (`means_elbow_interval`).
    curve_r (G,) and band (2, G): the best fit's pointwise 95% bootstrap band over the measured range.
    """

    ranks: np.ndarray
    seeds: np.ndarray
    acc: np.ndarray
    levels: np.ndarray
    means: np.ndarray
    ci_lo: np.ndarray
    ci_hi: np.ndarray
    fits: dict[str, ModelFit]
    delta: float
    horizon: float
    interval: str
    n_boot: int
    elbow: float
    elbow_ci: tuple[float, float]
    kneedle: float
    kneedle_ci: tuple[float, float]
    kneedle_data: float
    elbow_means: float
    elbow_means_ci: tuple[float, float]
    trends: Trends
    curve_r: np.ndarray
    band: np.ndarray
    notes: tuple[str, ...]
    selection: dict = field(default_factory=dict)   # family name -> share of bootstrap replicates choosing it
    elbow_ci_fixed: tuple[float, float] = (math.nan, math.nan)  # the interval if the best family were known

    @property
    def best(self) -> ModelFit:
        return next(iter(self.fits.values()))

    @property
    def n_seeds(self) -> int:
        return int(np.unique(self.seeds).size)

    def to_dict(self) -> dict:
        nan = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
        return plain({
            "ranks": [int(r) if float(r).is_integer() else float(r) for r in self.levels],
            "n_seeds": self.n_seeds, "n_runs": int(self.acc.size),
            "means": self.means, "means_ci": np.stack([self.ci_lo, self.ci_hi], 1),
            "best_model": self.best.name, "params": self.best.params(),
            "elbow": nan(self.elbow), "elbow_ci": [nan(v) for v in self.elbow_ci],
            "family_chosen": dict(self.selection), "elbow_ci_fixed_family": [nan(v) for v in self.elbow_ci_fixed],
            "kneedle": nan(self.kneedle), "kneedle_ci": [nan(v) for v in self.kneedle_ci],
            "kneedle_data": nan(self.kneedle_data), "elbow_means": nan(self.elbow_means),
            "elbow_means_ci": [nan(v) for v in self.elbow_means_ci],
            "r2": self.best.r2, "loo_rmse": self.best.loo_rmse, "lack_of_fit_p": self.best.lack_of_fit_p,
            **self.trends.to_dict(),
            "delta": self.delta, "horizon": self.horizon, "interval": self.interval, "n_boot": self.n_boot,
            "models": [f.to_dict() for f in self.fits.values()],
            "notes": list(self.notes),
        })


def lack_of_fit_p(rss: float, ranks: np.ndarray, acc: np.ndarray, q: int) -> float | None:
    """Lack-of-fit F-test: p of a q-parameter curve leaving `rss` if it ran through the rank means.

    The seeds' scatter within each rank is the pure error; what the curve leaves beyond it, over the
    L - q degrees of freedom the ranks spare, is its misfit. None without replicates or spare ranks.
    """
    levels = np.unique(ranks)
    pure = sum(float(((acc[ranks == r] - acc[ranks == r].mean()) ** 2).sum()) for r in levels)
    L, n = levels.size, acc.size
    if n <= L or L <= q or pure <= 0:
        return None
    f = (max(rss - pure, 0.0) / (L - q)) / (pure / (n - L))
    return float(stats.f.sf(f, L - q, n - L))


def means_elbow(levels: np.ndarray, means: np.ndarray, delta: float) -> float | np.ndarray:
    """The doubling rule without a curve: the smallest measured rank from which every measured step
    up the ranks gains less than delta on the means; inf when even the last step gains delta.
    levels (k,), means (k,) or (m, k) -> float or (m,)."""
    after = _last_true(np.diff(np.atleast_2d(means), axis=1) >= delta) + 1    # the rank after the last big step
    out = np.where(after < levels.size - 1, np.asarray(levels, float)[np.minimum(after, levels.size - 1)], np.inf)
    return float(out[0]) if np.ndim(means) == 1 else out


def means_elbow_interval(ranks: np.ndarray, acc: np.ndarray, delta: float, n_boot: int,
                         rng: np.random.Generator, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of `means_elbow` (measured ranks or inf) over a bootstrap within each rank.

    Each rank's runs are resampled with replacement; their deviations from the rank's mean are
    rescaled by sqrt(m/(m-1)) for its m runs, so the resampled means keep the runs' variance (plain
    resampling of 3 seeds shrinks it by 2/3). A rank with one run does not vary.
    """
    levels = np.unique(ranks)
    means = np.empty((n_boot, levels.size))
    for j, r in enumerate(levels):
        v = acc[ranks == r]
        dev = (v - v.mean()) * (math.sqrt(v.size / (v.size - 1)) if v.size > 1 else 0.0)
        means[:, j] = v.mean() + dev[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means_elbow(levels, means, delta), [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def _loo_rmse(family: Family, ranks: np.ndarray, acc: np.ndarray) -> float | None:
    """Leave each rank out, fit the rest, predict its mean: RMSE over ranks (the ends extrapolate)."""
    levels = np.unique(ranks)
    if levels.size < 4:
        return None
    out = ranks[None, :] == levels[:, None]                                   # (k, n): the rank each fit leaves out
    theta, _ = fit_many(family, ranks, np.broadcast_to(acc, out.shape), (~out).astype(float))
    predicted = family.predict(theta, levels)[np.arange(levels.size), np.arange(levels.size)]
    errors = predicted - np.array([acc[o].mean() for o in out])
    return float(np.sqrt(np.mean(np.square(errors))))


def fit_sweep(ranks, seeds, acc, *, tail=None, families=None, delta: float = DELTA, n_boot: int = 1000,
              interval: str = "residual", horizon: float = HORIZON,
              rng: np.random.Generator | int | None = 0) -> SweepFit:
    """Fit the capacity families to one sweep and estimate its elbow with intervals.

    ranks, seeds, acc: (n,) one entry per run (accuracy in points). tail: tau(0..m) (m+1,) of a
    measured spectrum, enabling the "spectral" family. families: names to compare (default: all
    the data allow). interval: "residual" or "seeds" (see `bootstrap`). Raises UserError when the
    sweep is too small to fit (fewer than 3 ranks, or fewer than q + 3 runs, where AICc is undefined).
    """
    ranks, seeds, acc = check_points(ranks, seeds, acc)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    levels = np.unique(ranks)
    n, n_seeds = acc.size, np.unique(seeds).size
    if levels.size < 3:
        raise UserError(f"needs at least 3 distinct ranks to fit a curve, got "
                        f"{', '.join(f'{r:g}' for r in levels)}")
    if delta <= 0 or horizon < 1 or n_boot < 10:
        raise UserError("delta must be > 0, horizon >= 1 and n_boot >= 10")
    if interval == "seeds" and n_seeds < 2:
        raise UserError("a bootstrap over seeds needs at least 2 seeds")
    names = families or [f for f in FAMILIES if f != "spectral" or tail is not None]
    fams = [f for f in (make_family(name, ranks, tail) for name in names) if n >= f.n_params + 3]
    if not fams:
        raise UserError(f"{n} runs over {levels.size} ranks are too few for a 3-parameter fit with AICc "
                        f"(need at least 6 runs): add seeds or ranks")

    boots = [bootstrap(f, ranks, seeds, acc, n_boot=n_boot, interval=interval, rng=rng) for f in fams]
    aicc = np.array([_aicc(b.rss, n, b.family.n_params) for b in boots])
    weights = np.exp(-0.5 * (aicc - aicc.min()))
    weights /= weights.sum()
    tss = float(((acc - acc.mean()) ** 2).sum())
    fits: dict[str, ModelFit] = {}
    for i in np.argsort(aicc, kind="stable"):                     # best first; ties keep FAMILIES order
        b = boots[i]
        fits[b.family.name] = ModelFit(b.family, b.theta, *b.interval(), b.rss, float(aicc[i]),
                                       1 - b.rss / tss if tss > 0 else math.nan,
                                       _loo_rmse(b.family, ranks, acc), float(weights[i]),
                                       lack_of_fit_p(b.rss, ranks, acc, b.family.n_params))
    best = boots[int(np.argsort(aicc, kind="stable")[0])]
    fam = best.family
    lo_r, hi_r = float(levels.min()), float(levels.max())
    curve_r = rank_grid(lo_r, hi_r, 200)
    elbows = doubling_elbow(fam, best.boot, delta, lo_r, hi_r * horizon)
    knees = kneedle_rank(fam, best.boot, lo_r, hi_r, delta)
    selected, chosen = selection_bootstrap(boots, weights, ranks, seeds, acc, delta=delta, lo=lo_r,
                                           hi=hi_r * horizon, n_boot=n_boot, interval=interval, rng=rng)
    means = np.array([acc[ranks == r].mean() for r in levels])
    out = SweepFit(
        ranks, seeds, acc, levels, means, *_mean_ci(ranks, acc, levels), fits, delta, horizon, interval, n_boot,
        elbow=float(doubling_elbow(fam, best.theta, delta, lo_r, hi_r * horizon)),
        elbow_ci=_interval(selected, best.tail), elbow_ci_fixed=_interval(elbows, best.tail),
        selection={b.family.name: float(np.mean(chosen == i)) for i, b in enumerate(boots)},
        kneedle=float(kneedle_rank(fam, best.theta, lo_r, hi_r, delta)), kneedle_ci=_interval(knees, best.tail),
        kneedle_data=float(2.0 ** kneedle(np.log2(levels), means)), elbow_means=means_elbow(levels, means, delta),
        elbow_means_ci=means_elbow_interval(ranks, acc, delta, n_boot, rng),
        trends=trend_tests(ranks, seeds, acc),
        curve_r=curve_r, band=np.quantile(fam.predict(best.boot, curve_r), [best.tail, 1 - best.tail], axis=0),
        notes=())
    return _with_notes(out)


def _mean_ci(ranks, acc, levels):
    """t-interval of each rank's mean over its seeds: (k,) lo, hi; NaN where a rank has one run."""
    lo, hi = np.full(levels.size, np.nan), np.full(levels.size, np.nan)
    for i, r in enumerate(levels):
        v = acc[ranks == r]
        if v.size >= 2:
            half = stats.t.ppf(0.5 + LEVEL / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
            lo[i], hi[i] = v.mean() - half, v.mean() + half
    return lo, hi


def _with_notes(fit: SweepFit) -> SweepFit:
    """Plain-language verdicts on the statistics (significance level ALPHA_TEST)."""
    notes = []
    t = fit.trends
    if fit.n_seeds == 1:
        notes.append("single seed: intervals rest on the scatter around the curve only")
    if fit.acc.max() <= 1.0:
        notes.append("all accuracies <= 1: they look like fractions, but delta is in points (0-100)")
    if t.monotone_p is None or t.monotone_p >= ALPHA_TEST:
        notes.append(f"no significant increase with rank ({t.monotone_test} p={p_text(t.monotone_p)}): "
                     "the curve may already be flat at the smallest rank")
    if t.diminishing_p is None or t.diminishing_p >= ALPHA_TEST:
        notes.append(f"gains per doubling do not diminish significantly (p={p_text(t.diminishing_p)})")
    if t.decline_p is not None and t.decline_p < ALPHA_TEST:
        notes.append(f"accuracy falls over the upper ranks (p={p_text(t.decline_p)}): not monotone; "
                     "saturating fits are misspecified there")
    if not np.isfinite(fit.elbow):
        notes.append(f"a doubling still gains >= {fit.delta:g} points at {fit.horizon:g}x the largest rank: "
                     "no elbow within the horizon")
    elif not np.isfinite(fit.elbow_ci[1]):
        notes.append(f"the elbow's upper bound lies beyond {fit.horizon:g}x the largest rank")
    if np.isfinite(fit.elbow) and fit.elbow > fit.levels.max():
        notes.append("the elbow is extrapolated beyond the largest measured rank")
    best = fit.best
    if fit.selection and fit.selection.get(best.name, 1.0) < 0.5:
        notes.append("the family is uncertain: bootstrap replicates chose " + ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(fit.selection.items(), key=lambda kv: -kv[1]) if v > 0)
            + "; the elbow's interval includes that choice")
    if best.lack_of_fit_p is not None and best.lack_of_fit_p < ALPHA_TEST:
        notes.append(f"the {best.name} model misses the rank means beyond the seeds' scatter (lack-of-fit "
                     f"p={p_text(best.lack_of_fit_p)}): its elbow and intervals rest on a curve the data "
                     f"reject; compare the elbow on the means ({fit.elbow_means:g})")
    if best.family.grid.size and best.theta[1] == 0:
        notes.append(f"the {best.name} model has {best.family.names[1]} = 0 (no rise): "
                     f"its {best.family.names[-1]} is not identified")
    elif best.family.grid.size and best.theta[-1] in (best.family.grid[0], best.family.grid[-1]):
        notes.append(f"{best.family.names[-1]} of the {best.name} model is at its search bound")
    return SweepFit(**{**fit.__dict__, "notes": tuple(notes)})


def p_text(p) -> str:
    """A p-value to 2 significant digits ("n/a": no test)."""
    return "n/a" if p is None else f"{p:.2g}"
