"""Multi-seed significance: paired tests, corrections, aggregates and a verdict per claim.

The input is a tidy table, one row per run: (dataset, backbone, method, rank, seed, metric), read
from run directories (`runs.discover`) or from a CSV with those columns. Runs become *method
labels*: "head", "full", "adapter-r{rank}" (plus "-{placement}/-{blocks}/-{init}" when not the
default, as in run ids) and "adapter", which means, per (dataset, backbone) pair, the adapter rank
with the highest mean `best_val_acc1` over seeds (ties: the smaller rank). Model selection never
looks at test accuracy.

Per pair and method pair (a, b), paired by seed: mean difference a - b, paired t-test, an exact
sign-flip permutation test (valid at n = 3, where its two-sided p is 0.25 at best), Wilcoxon
signed-rank, Hedges' g and a percentile-bootstrap interval (plus a t interval); Welch, an exact
two-sample permutation test and the rank-sum test when the seeds differ and `allow_unpaired` is
set. p-values are corrected over every comparison of the table (Holm by default, or
Benjamini-Hochberg, via statsmodels with `method=` always explicit).

Honest power: each test states the smallest p-value it can attain with this many seeds (after
correction, at best). A result whose best attainable p exceeds alpha is "inconclusive
(underpowered)", never "not significant".

Claims (a TOML file) get one verdict each: see analysis/claims.py. Their tests use the
statistics here: "perm" (the default test) is the sign-flip test over paired units (exact up to 16
units, Monte Carlo beyond) or the two-sample permutation test; "t" the t-test, which assumes
normal noise.

Imports no torch and no plotting.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from .. import runs
from ..errors import UserError
from . import groups
from .tables import markdown_table, output_folder, p_value, text_table, write_csv

if TYPE_CHECKING:
    from .claims import Claim

TESTS = ("perm", "t")  # the test behind verdicts: exact permutation (default) or t-test
CORRECTIONS = ("holm", "fdr_bh", "bonferroni", "none")
UNDERPOWERED = "inconclusive (underpowered)"
TEST_NAMES = {"perm": "permutation test", "t": "t-test"}  # sign-flip (paired) or two-sample; exact up to 16 units


# -- tests on one comparison -----------------------------------------------------------------------

def sign_flip_test(d, alternative: str = "two-sided", *, rng: np.random.Generator | None = None,
                   max_exact: int = 16, n_resamples: int = 20_000) -> tuple[float, float]:
    """Paired permutation test of mean(d) = 0 by flipping the signs of the differences.

    d: (n,) paired differences. Exact over all 2**n sign vectors when n <= max_exact, otherwise
    Monte Carlo with `rng`. Returns (p, min_p): min_p is the smallest p-value attainable with n
    differences (two-sided 2 / 2**n, one-sided 1 / 2**n: 0.25 and 0.125 at n = 3).
    """
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        return 1.0, 1.0
    obs = d.sum()
    if n <= max_exact:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # (2**n, n)
        null = signs @ d
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        null = np.concatenate([[obs], rng.choice([-1.0, 1.0], size=(n_resamples, n)) @ d])
    p = _perm_p(null, obs, alternative, tol=1e-9 * max(1.0, np.abs(d).sum()))
    min_p = (2.0 if alternative == "two-sided" else 1.0) / min(2.0 ** n, null.size)
    return p, float(min(1.0, min_p))


def permutation_test_2samp(x, y, alternative: str = "two-sided", *, rng: np.random.Generator | None = None,
                           max_exact: int = 20_000, n_resamples: int = 20_000) -> tuple[float, float]:
    """Two-sample permutation test of mean(x) - mean(y) = 0 (exact when C(n_x + n_y, n_x) <= max_exact).

    x: (n_x,), y: (n_y,). Returns (p, min_p) as `sign_flip_test` (min_p: 1 or 2 over the number of splits).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    pooled, na, nb = np.concatenate([x, y]), x.size, y.size
    total = math.comb(na + nb, na)
    if total <= max_exact:
        idx = np.array(list(combinations(range(na + nb), na)))  # (total, na)
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        idx = rng.permuted(np.tile(np.arange(na + nb), (n_resamples, 1)), axis=1)[:, :na]
    sum_a = pooled[idx].sum(axis=1)
    null = sum_a / na - (pooled.sum() - sum_a) / nb
    obs = x.mean() - y.mean()
    if total > max_exact:  # Monte Carlo: the observed split counts as one of the resamples
        null = np.concatenate([[obs], null])
    p = _perm_p(null, obs, alternative, tol=1e-9 * max(1.0, np.abs(pooled).sum()))
    min_p = (2.0 if alternative == "two-sided" else 1.0) / min(total, null.size)
    return p, float(min(1.0, min_p))


def _perm_p(null: np.ndarray, obs: float, alternative: str, tol: float) -> float:
    """p-value of `obs` against a null distribution (R,); two-sided is twice the smaller tail, as in
    scipy.stats.permutation_test (the same as P(|T| >= |t|) when the null is symmetric)."""
    greater, less = np.mean(null >= obs - tol), np.mean(null <= obs + tol)
    if alternative == "two-sided":
        return float(min(1.0, 2 * min(greater, less)))
    if alternative in ("greater", "less"):
        return float(greater if alternative == "greater" else less)
    raise ValueError(f"alternative {alternative!r}")


def hedges_g(x, y) -> float | None:
    """Hedges' g of x (n_x,) vs y (n_y,): (mean x - mean y) / pooled SD, times the exact small-sample
    correction J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2)), df = n_x + n_y - 2. None if undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    df = x.size + y.size - 2
    if x.size < 2 or y.size < 2:
        return None
    sp = math.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / df)
    if sp == 0:
        return None
    j = math.exp(math.lgamma(df / 2) - math.lgamma((df - 1) / 2)) / math.sqrt(df / 2)
    return float(j * (x.mean() - y.mean()) / sp)


def adjust(pvalues, method: str = "holm") -> np.ndarray:
    """Adjusted p-values (m,) for raw p-values (m,): statsmodels' multipletests, method explicit."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0 or method == "none":
        return p.copy()
    from statsmodels.stats.multitest import multipletests

    return multipletests(p, method=method)[1]


def best_adjusted(min_p: float, n_tests: int, method: str) -> float:
    """The smallest adjusted p-value a test with attainable minimum `min_p` can reach in a family of
    n_tests: m * min_p for Holm/Bonferroni (it is the family's smallest), min_p for BH or none."""
    if method in ("holm", "bonferroni"):
        return min(1.0, n_tests * min_p)
    return min_p


def t_pvalue(result) -> float:
    """A t-test's p-value; NaN (zero variance and zero mean difference: no evidence) becomes 1."""
    p = float(result.pvalue)
    return 1.0 if math.isnan(p) else p


@dataclass(frozen=True)
class Comparison:
    """Method a vs method b on one (dataset, backbone) pair; differences are a - b."""
    dataset: str
    backbone: str
    a: str
    b: str
    n: int                      # seeds (paired) or min(n_a, n_b) (unpaired)
    paired: bool
    seeds: tuple
    alternative: str
    mean_a: float
    mean_b: float
    mean_diff: float
    ci: tuple | None            # percentile bootstrap of the mean difference, at `level`
    ci_t: tuple | None          # t interval (paired t or Welch), at `level`
    p_t: float | None           # paired t-test, or Welch when unpaired
    p_perm: float               # exact sign-flip (paired) or two-sample permutation (unpaired)
    p_wilcoxon: float | None    # signed-rank (paired, >= 2 non-zero differences) or rank-sum
    hedges_g: float | None
    test: str                   # which of p_perm / p_t the verdict uses
    p: float
    min_p: float                # smallest p the verdict's test can attain with these seeds
    min_p_by_test: dict = field(default_factory=dict)  # {"perm", "wilcoxon", "t"}: each test's smallest p
    p_adj: float | None = None
    verdict: str = ""

    @property
    def pair(self) -> str:
        return f"{self.dataset}/{self.backbone}"

    def to_dict(self) -> dict:
        return asdict(self)


def compare(x, y, *, paired: bool, alternative: str = "two-sided", test: str = "perm",
            rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95,
            dataset: str = "", backbone: str = "", a: str = "a", b: str = "b", seeds=(),
            detail: bool = True) -> Comparison:
    """All statistics of a vs b from x (n_a,) and y (n_b,) metric values (paired: same seed order).

    detail=False skips what no verdict uses (Wilcoxon, the bootstrap interval): for claims and simulations."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if paired and x.size != y.size:
        raise ValueError("paired comparison needs equal sizes")
    q = ((1 - level) / 2, 1 - (1 - level) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            d = x - y
            n = d.size
            p_perm, min_perm = sign_flip_test(d, alternative, rng=rng)
            p_t = t_pvalue(stats.ttest_rel(x, y, alternative=alternative)) if n >= 2 else None
            nz = int(np.count_nonzero(d))
            p_w = float(stats.wilcoxon(d, alternative=alternative).pvalue) if nz >= 2 and detail else None
            boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n >= 2 and detail else None
            se, df = (d.std(ddof=1) / math.sqrt(n), n - 1) if n >= 2 else (None, None)
        else:
            n = min(x.size, y.size)
            p_perm, min_perm = permutation_test_2samp(x, y, alternative, rng=rng)
            ok = x.size >= 2 and y.size >= 2
            p_t = t_pvalue(stats.ttest_ind(x, y, equal_var=False, alternative=alternative)) if ok else None
            p_w = float(stats.mannwhitneyu(x, y, alternative=alternative).pvalue) if detail else None
            boot = (x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
                    - y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)) if ok and detail else None
            if ok:
                va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
                se = math.sqrt(va + vb)
                df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1)) if se > 0 else 1.0
            else:
                se, df = None, None
    diff = float(x.mean() - y.mean())
    ci = tuple(float(v) for v in np.quantile(boot, q)) if boot is not None else None
    ci_t = None
    if se is not None:
        half = float(stats.t.ppf(q[1], df) * se)
        ci_t = (diff - half, diff + half)
    if test == "perm":
        p, min_p = p_perm, min_perm
    else:
        p, min_p = (p_t if p_t is not None else 1.0), (0.0 if p_t is not None else 1.0)
    mins = {"perm": min_perm, "wilcoxon": min_perm if p_w is not None else None,  # exact: same combinatorics
            "t": 0.0 if p_t is not None else None}
    return Comparison(dataset, backbone, a, b, int(n), bool(paired), tuple(seeds), alternative,
                      float(x.mean()), float(y.mean()), diff, ci, ci_t, p_t, p_perm, p_w,
                      hedges_g(x, y), test, float(p), float(min_p), mins)


def verdict(p_adj: float, best_p: float, alpha: float) -> str:
    """"significant" / "not significant", or UNDERPOWERED when even the best attainable p > alpha."""
    if best_p > alpha:
        return UNDERPOWERED
    return "significant" if p_adj <= alpha else "not significant"


# -- aggregates across pairs -----------------------------------------------------------------------

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


# -- the tidy table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """Metric values by (dataset, backbone, label) -> {seed: value}, one configuration per label; each
    sweep's label without the rank ("adapter", "adapter-attn") is the rank selected on validation per
    pair (`selected`: (dataset, backbone, sweep label) -> (rank, mean best_val_acc1))."""
    metric: str
    cells: dict
    selected: dict
    source: Path | None = None
    notes: tuple = ()

    def pairs(self) -> list[tuple[str, str]]:
        return sorted({(d, b) for d, b, _ in self.cells})

    def labels(self, pair: tuple[str, str] | None = None) -> list[str]:
        found = {lab for d, b, lab in self.cells if pair is None or (d, b) == pair}
        return sorted(found, key=groups.order)

    def values(self, pair: tuple[str, str], label: str) -> dict[int, float]:
        return self.cells.get((*pair, label), {})

    def ranks(self, pair: tuple[str, str], sweep: str = "adapter") -> list[int]:
        """Adapter ranks of `sweep` (default: the reference configuration) run on this pair, ascending."""
        return sorted(r for s, r in map(groups.split, self.labels(pair)) if s == sweep and r is not None)


def table_from_rows(rows: list[dict], metric: str = "test_acc1", source: Path | None = None,
                    notes: tuple = ()) -> Table:
    """Build a Table from tidy rows (dicts with dataset, backbone, method, rank, seed, the metric and
    best_val_acc1, and optionally any config field, or their "label": `groups.labelled_rows`). Rows
    whose status is set and not "complete", or whose metric is missing, are left out with a note;
    two rows for the same (dataset, backbone, label, seed) are an error."""
    kept, dropped = [], 0
    for row in rows:
        if row.get("status") not in (None, "", "complete") or row.get(metric) in (None, ""):
            dropped += 1
        elif row["method"] == "adapter" and row.get("rank") in (None, ""):
            raise UserError(f"{row.get('run') or row['dataset']}: an adapter row without a rank")
        else:
            kept.append(row)
    labels = [row["label"] for row in kept] if all("label" in row for row in kept) else groups.labels(kept)
    cells, val, origin = {}, {}, {}
    for row, label in zip(kept, labels):
        key = (str(row["dataset"]), str(row["backbone"]), label)
        if row.get("seed") is None:
            raise UserError(f"{row.get('run') or '/'.join(key)}: no seed")
        seed = int(row["seed"])
        if seed in cells.setdefault(key, {}):
            raise UserError(f"two runs for {'/'.join(key)} seed {seed}: {origin[key + (seed,)]} and "
                            f"{row.get('run') or 'another row'}; keep one")
        origin[key + (seed,)] = row.get("run") or "a row"
        cells[key][seed] = float(row[metric])
        v = row.get("best_val_acc1")
        val.setdefault(key, {})[seed] = None if v in (None, "") else float(v)
    if not cells:
        raise UserError(f"no runs with {metric} in {source or 'the table'}")
    notes = tuple(notes) + ((f"left out {dropped} rows that are not complete or lack {metric}",) if dropped else ())
    sweeps: dict[tuple, dict] = {}
    for (d, b, lab), seeds in val.items():
        sweep, rank = groups.split(lab)
        if rank is not None:
            sweeps.setdefault((d, b, sweep), {})[rank] = (
                None if None in seeds.values() else float(np.mean(list(seeds.values()))))
    selected = {}
    for (d, b, sweep), by_rank in sorted(sweeps.items()):
        if None in by_rank.values():
            notes += (f"{d}/{b}: no rank of {sweep} selected (best_val_acc1 missing); name a rank "
                      f"({groups.ranked(sweep, min(by_rank))})",)
            continue
        rank = groups.choose_rank(by_rank)
        selected[(d, b, sweep)] = (rank, by_rank[rank])
        cells[(d, b, sweep)] = cells[(d, b, groups.ranked(sweep, rank))]
    return Table(metric, cells, selected, source, notes)


CSV_COLUMNS = ("dataset", "backbone", "method", "rank", "seed")


def read_csv(path: Path, metric: str = "test_acc1") -> list[dict]:
    """Tidy rows from a CSV with columns dataset, backbone, method, rank (empty unless adapter), seed,
    the metric, and optionally best_val_acc1, status and any config field (placement, blocks, init,
    activation, scale, lr, ...: a configuration is every such field but the seed, `groups`)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    missing = [c for c in (*CSV_COLUMNS, metric) if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    out = []
    for line, row in enumerate(rows, start=2):
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        for name, kind in (("seed", int), ("rank", int), (metric, float), ("best_val_acc1", float)):
            v = row.get(name)
            if v in (None, ""):
                row[name] = None
                continue
            try:
                row[name] = kind(float(v)) if kind is int else kind(v)
            except ValueError:
                raise UserError(f"{path}: line {line}: {name} {v!r} is not a number") from None
        if row["seed"] is None:
            raise UserError(f"{path}: line {line}: no seed")
        row["run"] = f"{path.name} line {line}"
        out.append(row)
    return out


def load_table(source: Path, metric: str = "test_acc1") -> Table:
    """A Table from a folder of run directories or a CSV file (see `read_csv`)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return table_from_rows(read_csv(source, metric), metric, source=None)
    found = runs.discover(source)
    notes = tuple(f"skipped {p}: {why}" for p, why in found.skipped[:20])
    if len(found.skipped) > 20:
        notes += (f"... and {len(found.skipped) - 20} more skipped",)
    return table_from_rows(groups.labelled_rows(found.runs), metric, source=source, notes=notes)


def paired_values(table: Table, pair: tuple[str, str], a: str, b: str,
                  allow_unpaired: bool = False) -> tuple[np.ndarray, np.ndarray, tuple, bool]:
    """(x (n_a,), y (n_b,), seeds, paired): a's and b's values on `pair`, in seed order.

    Raises UserError when the seeds differ, unless allow_unpaired (then Welch etc. are used)."""
    va, vb = table.values(pair, a), table.values(pair, b)
    if set(va) == set(vb):
        seeds = tuple(sorted(va))
        return np.array([va[s] for s in seeds]), np.array([vb[s] for s in seeds]), seeds, True
    if not allow_unpaired:
        only_a, only_b = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
        what = "; ".join(f"{m} lacks seed(s) {', '.join(map(str, s))}" for m, s in ((b, only_a), (a, only_b)) if s)
        raise UserError(f"{pair[0]}/{pair[1]}: missing seeds for a paired test ({what}); "
                        "run them, or pass --allow-unpaired to use Welch")
    return np.array([va[s] for s in sorted(va)]), np.array([vb[s] for s in sorted(vb)]), (), False


# -- the report ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignificanceReport:
    metric: str
    alpha: float
    test: str
    correction: str
    n_boot: int
    seed: int
    selected: tuple                 # dicts {"dataset", "backbone", "label" (the sweep), "rank", "val_acc1"}
    comparisons: tuple              # Comparison, two-sided, corrected over all of them
    aggregates: tuple               # Aggregate per method pair
    claims: tuple = ()              # ClaimResult
    notes: tuple = ()
    figures: tuple = ()             # file names written beside significance.json

    def to_dict(self) -> dict:
        return {"metric": self.metric, "alpha": self.alpha, "test": self.test, "correction": self.correction,
                "n_boot": self.n_boot, "seed": self.seed,
                "selection": "adapter (and each sweep's label without the rank) = per pair, the rank with "
                             f"{groups.TIE_RULE} (validation only; test accuracy is never used to select)",
                "selected": list(self.selected), "comparisons": [c.to_dict() for c in self.comparisons],
                "aggregates": [a.to_dict() for a in self.aggregates],
                "claims": [c.to_dict() for c in self.claims], "notes": list(self.notes),
                "figures": list(self.figures)}

    # rows shared by the text, Markdown and LaTeX renderings
    def _comparison_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["pair", "a - b", "n", "diff", f"{1 - self.alpha:.0%} CI (boot)", "p_t", "p_perm", "p_adj",
                "g", "min p", "verdict"]
        rows = [[c.pair, f"{c.a} - {c.b}", f"{c.n}{'' if c.paired else 'u'}", f"{c.mean_diff:+.2f}",
                 _ci(c.ci), p_value(c.p_t), p_value(c.p_perm), p_value(c.p_adj),
                 "-" if c.hedges_g is None else f"{c.hedges_g:+.2f}", p_value(c.min_p), c.verdict]
                for c in self.comparisons]
        return head, rows

    def _aggregate_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["a - b", "pairs", "mean diff", "CI (pairs, seeds)", "IQM", "IQM CI", "P(a>b)", "W/T/L", "p sign"]
        mixed = any(g.mixed for g in self.aggregates)
        rows = []
        for g in self.aggregates:
            rows.append([f"{g.a} - {g.b}", str(g.n_pairs), f"{g.mean_diff:+.2f}", _ci(g.ci),
                         "-" if g.iqm is None else f"{g.iqm:+.2f}", _ci(g.iqm_ci),
                         f"{g.prob_improvement:.2f} {_ci(g.prob_improvement_ci, '.2f')}",
                         f"{g.wins}/{g.ties}/{g.losses}", p_value(g.p_sign)])
            if mixed:
                fit = g.mixed or {}
                rows[-1].append("-" if fit.get("coef") is None else f"{fit['coef']:+.2f} (p = {p_value(fit['p'])})")
        return head + (["MixedLM"] if mixed else []), rows

    def _selected_text(self) -> str:
        by_rank = {}
        for sel in self.selected:
            key = (groups.order(sel["label"]), sel["label"], sel["rank"])
            by_rank[key] = by_rank.get(key, 0) + 1
        return ", ".join(f"{'' if lab == 'adapter' else lab + ' '}r{r} on {k} pair{'s' * (k > 1)}"
                         for (_, lab, r), k in sorted(by_rank.items())) or "none"

    def table(self) -> str:
        """Plain text: selection, pairwise comparisons, aggregates, one verdict per claim."""
        out = [f"significance of {self.metric}: verdicts by the {TEST_NAMES[self.test]}, "
               f"{self.correction} correction over {len(self.comparisons)} comparisons, alpha = {self.alpha}",
               f"adapter = per pair, the rank with {groups.TIE_RULE} (test accuracy never used): "
               f"{self._selected_text()}"]
        for n in sorted({c.n for c in self.comparisons if c.paired}):
            c = next(c for c in self.comparisons if c.paired and c.n == n)
            out.append(f"with {n} paired seeds the smallest two-sided p is {p_value(c.min_p_by_test['perm'])} for the "
                       f"exact sign-flip and Wilcoxon tests; the t-test can go lower by assuming normal seed noise")
        if self.comparisons:
            out += ["", text_table(*self._comparison_rows())]
        if self.aggregates:
            out += ["", "across pairs:", text_table(*self._aggregate_rows())]
        for c in self.claims:
            out += ["", f"[{c.verdict}] {c.id}: {c.text}".rstrip(": "), f"    {c.summary}"]
        if self.notes:
            out += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        """A Markdown section: comparisons, aggregates and claims as tables."""
        out = ["## Significance", "",
               f"Metric `{self.metric}`; verdicts by the {TEST_NAMES[self.test]} with {self.correction} "
               f"correction over {len(self.comparisons)} comparisons at alpha = {self.alpha}. "
               f"`adapter` (and each other sweep's label without its rank) is, per pair, the rank with {groups.TIE_RULE} "
               f"({self._selected_text()}); test accuracy is never used to select. A result is "
               "*inconclusive (underpowered)* when no data with this many seeds could reach alpha.", ""]
        if self.comparisons:
            out += ["### Pairwise comparisons", "", markdown_table(*self._comparison_rows()), ""]
            out += [f"![paired differences with {1 - self.alpha:.0%} bootstrap intervals]({f})\n" for f in self.figures]
        if self.aggregates:
            out += ["### Across pairs", "", markdown_table(*self._aggregate_rows()), ""]
        if self.claims:
            out += ["### Claims", "", markdown_table(["claim", "verdict", "evidence"],
                                                [[f"**{c.id}** {c.text}".strip(), c.verdict, c.summary]
                                                 for c in self.claims]), ""]
        return "\n".join(out)

    def latex(self) -> str:
        """A booktabs table: one row per claim, or the pairwise comparisons when there are no claims."""
        if self.claims:
            rows = [[_tex(c.id) + (r" \newline {\footnotesize " + _tex(c.text) + "}" if c.text else ""),
                     _tex(c.verdict), r"{\footnotesize " + _tex(c.summary) + "}"] for c in self.claims]
            spec, head = r"p{0.22\linewidth}p{0.13\linewidth}p{0.57\linewidth}", ["Claim", "Verdict", "Evidence"]
        else:
            head, body = self._comparison_rows()
            rows = [[_tex(v) for v in r] for r in body]
            head, spec = [_tex(h) for h in head], "l" * len(head)
        lines = [r"% generated by adaptertune analyze significance; needs \usepackage{booktabs}",
                 r"\begin{tabular}{" + spec + "}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
        lines += [" & ".join(r) + r" \\" for r in rows]
        lines += [r"\bottomrule", r"\end{tabular}", ""]
        return "\n".join(lines)


def _ci(ci, fmt: str = "+.2f") -> str:
    return "-" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
        "Γ": r"$\Gamma$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "α": r"$\alpha$", "−": "-"}


def _tex(s: str) -> str:
    parts = str(s).replace(">=", "\0g").replace("<=", "\0l")
    return "".join(_TEX.get(ch, ch) for ch in parts).replace("\0g", r"$\geq$").replace("\0l", r"$\leq$")


# -- entry points ----------------------------------------------------------------------------------

def _default_labels(table: Table) -> list[str]:
    """The selected adapter of the reference sweep ("adapter"; else of every sweep) and every baseline;
    a sweep of adapters alone compares its ranks. Other sweeps are compared when named (--methods)."""
    labels = table.labels()
    adapters = [lab for lab in labels if groups.split(lab)[1] is not None]
    selected = [lab for lab in labels if lab.startswith("adapter") and groups.split(lab)[1] is None]
    chosen = (["adapter"] if "adapter" in selected else selected or adapters)
    chosen += [lab for lab in labels if not lab.startswith("adapter")]
    return chosen if len(chosen) >= 2 else adapters


def analyze(table: Table, claims: list[Claim] = (), *, alpha: float = 0.05, test: str = "perm",
            correction: str = "holm", methods: list[str] | None = None, n_boot: int = 2000, seed: int = 0,
            mixed: bool = False, allow_unpaired: bool = False, runs_dir: Path | None = None) -> SignificanceReport:
    """Compare every pair of `methods` (default: the selected adapter and every baseline) on each
    (dataset, backbone) pair where both were run, correct over all comparisons, aggregate per method
    pair, and evaluate `claims`."""
    from .claims import evaluate_claim

    if test not in TESTS:
        raise UserError(f"--test {test!r}: choose one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise UserError(f"--correction {correction!r}: choose one of {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    labels = list(methods) if methods else _default_labels(table)
    known = table.labels()
    for lab in labels:
        if lab not in known:
            raise UserError(f"--methods: {lab!r} not in the data (have: {', '.join(known)})")
    rng = np.random.default_rng([seed, 1])
    comps, units_by = [], {}
    for pair in table.pairs():
        for a, b in combinations(labels, 2):
            if not (table.values(pair, a) and table.values(pair, b)):
                continue
            x, y, sd, pd = paired_values(table, pair, a, b, allow_unpaired)
            units_by.setdefault((a, b), []).append(((x, y, pd), f"{pair[0]}/{pair[1]}"))
            comps.append(compare(x, y, paired=pd, test=test, rng=rng, n_boot=n_boot, level=1 - alpha,
                                 dataset=pair[0], backbone=pair[1], a=a, b=b, seeds=sd))
    p_adj = adjust([c.p for c in comps], correction)
    comps = [replace(c, p_adj=float(q), verdict=verdict(q, best_adjusted(c.min_p, len(comps), correction), alpha))
             for c, q in zip(comps, p_adj)]
    rng = np.random.default_rng([seed, 2])
    aggs = [aggregate([u for u, _ in v], [n for _, n in v], a, b, rng=rng, n_boot=n_boot, level=1 - alpha,
                      mixed=mixed) for (a, b), v in units_by.items()]
    results = [evaluate_claim(c, table, alpha=alpha, test=test, correction=correction, n_boot=n_boot, seed=seed,
                              allow_unpaired=allow_unpaired, runs_dir=runs_dir, index=i)
               for i, c in enumerate(claims)]
    selected = tuple({"dataset": d, "backbone": b, "label": lab, "rank": r, "val_acc1": v}
                     for (d, b, lab), (r, v) in sorted(table.selected.items()))
    return SignificanceReport(table.metric, alpha, test, correction, n_boot, seed, selected, tuple(comps),
                              tuple(aggs), tuple(results), table.notes)


def analyze_runs(runs_dir: Path, out_dir: Path, claims=None, *, metric: str = "test_acc1",
                 latex: Path | None = None, plot: bool = True, **options) -> SignificanceReport:
    """Load the table (run folder or CSV), analyze, and write out_dir/significance.json, .csv (the
    pairwise comparisons) and significance.png (forest plot); with `latex`, also the LaTeX table
    there and its claims as JSON beside it. `claims`: a TOML path or a list of Claim. `options`:
    alpha, test, correction, methods, n_boot, seed, mixed, allow_unpaired (see `analyze`)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    table = load_table(runs_dir, metric)
    if isinstance(claims, (str, Path)):
        from .claims import load_claims

        claims = load_claims(Path(claims))
    report = analyze(table, claims or (), runs_dir=table.source, **options)
    if plot and report.comparisons:
        from . import plots

        png = plots.save(plots.significance_figure(report), out_dir / "significance.png")
        report = replace(report, figures=(png.name,))
    runs.write_json(out_dir / "significance.json", report.to_dict())
    _write_csv(out_dir / "significance.csv", report.comparisons)
    if latex is not None:
        latex = Path(latex)
        runs.write_text(latex, report.latex())
        runs.write_json(latex.with_suffix(".json"), {k: report.to_dict()[k] for k in
                                                     ("metric", "alpha", "test", "correction", "selection",
                                                      "selected", "claims")})
    return report


_CSV = ("dataset", "backbone", "a", "b", "n", "paired", "mean_a", "mean_b", "mean_diff", "ci_lo", "ci_hi",
        "ci_t_lo", "ci_t_hi", "p_t", "p_perm", "p_wilcoxon", "hedges_g", "test", "p", "min_p", "p_adj", "verdict")


def _write_csv(path: Path, comps) -> None:
    """One row per pairwise comparison (CRLF line ends, as csv's default has always written them)."""
    rows = [{**c.to_dict(), "ci_lo": (c.ci or (None, None))[0], "ci_hi": (c.ci or (None, None))[1],
             "ci_t_lo": (c.ci_t or (None, None))[0], "ci_t_hi": (c.ci_t or (None, None))[1]} for c in comps]
    write_csv(path, _CSV, rows, lineterminator="\r\n")


def add_arguments(parser) -> None:
    parser.add_argument("--claims", type=Path, default=None, help="claims TOML file (e.g. analysis/paper_claims.toml)")
    parser.add_argument("--metric", default="test_acc1", help="the column compared (percent)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (a claims file may set its own)")
    parser.add_argument("--correction", choices=CORRECTIONS, default="holm",
                        help="multiple-comparison correction: holm (FWER) or fdr_bh (Benjamini-Hochberg)")
    parser.add_argument("--test", choices=TESTS, default="perm",
                        help="test behind verdicts: perm (exact permutation, no normality) or t (t-test)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated labels to compare, e.g. adapter,full,head or adapter-r4,adapter-r16 "
                             "(default: adapter, i.e. the rank selected on validation, and every baseline)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap / Monte Carlo generator")
    parser.add_argument("--mixed", action="store_true", help="also fit MixedLM metric ~ method + (1 | pair)")
    parser.add_argument("--allow-unpaired", action="store_true",
                        help="compare methods with different seeds unpaired (Welch) instead of failing")
    parser.add_argument("--latex", type=Path, default=None,
                        help="LaTeX table path (default with --claims: paper/claims.tex; claims JSON beside it)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="skip the forest plot")


def run_command(args) -> int:
    source, out = Path(args.runs), output_folder(args)
    latex = args.latex or (Path("paper/claims.tex") if args.claims else None)
    if args.bootstrap < 10:
        raise UserError(f"--bootstrap must be at least 10, got {args.bootstrap}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    report = analyze_runs(source, out, claims=args.claims, metric=args.metric, latex=latex, plot=args.plot,
                          alpha=args.alpha, test=args.test, correction=args.correction, methods=methods,
                          n_boot=args.bootstrap, seed=args.seed, mixed=args.mixed,
                          allow_unpaired=args.allow_unpaired)
    print(report.table())
    wrote = [out / "significance.json", out / "significance.csv"] + ([latex] if latex else [])
    print("\nwrote " + ", ".join(map(str, wrote)))
    return 0
