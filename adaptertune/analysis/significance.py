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

Claims (a TOML file, see `load_claims`) get one verdict each: "supported" (the claim's test
rejects its null at alpha), "not supported" (the test could have, and did not) or "inconclusive
(underpowered)" (no data of this size could have supported it). The tests, all one-sided:

    better_all  a > b on each pair in scope, each at alpha (intersection-union: no correction needed)
    mean_diff   mean over pairs of the pair mean differences vs the bound(s), pairs as the units
                (two bounds: two one-sided tests); interval: hierarchical bootstrap (pairs, then seeds)
    wins        per-pair wins significant after the correction (Holm: family-wise) number >= k
    monotone    Page's L, blocks = (pair, seed), treatments = ranks ascending; with diminishing, the
                fall of the gain per doubling (minus its slope over the steps), blocks as the units
    elbow       the capacity analysis' 95% elbow interval is <= the rank on every pair in scope

"perm" (the default test) is the sign-flip test over paired units (exact up to 16 units, Monte
Carlo beyond) or the two-sample permutation test; "t" the t-test, which assumes normal noise.

Imports no torch and no plotting.
"""

from __future__ import annotations

import csv
import math
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

from .. import runs
from ..errors import UserError

TESTS = ("perm", "t")  # the test behind verdicts: exact permutation (default) or t-test
CORRECTIONS = ("holm", "fdr_bh", "bonferroni", "none")
KINDS = ("better_all", "mean_diff", "wins", "monotone", "elbow")
UNDERPOWERED = "inconclusive (underpowered)"
DEFAULT_VARIANT = {"placement": "block", "blocks": "all", "init": "zero"}
_CAPACITY_DEFAULT = {**DEFAULT_VARIANT, "activation": "gelu", "scale": 1.0}
_TEST_NAME = {"perm": "permutation test", "t": "t-test"}  # sign-flip (paired) or two-sample; exact up to 16 units


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


def _t_p(result) -> float:
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
            p_t = _t_p(stats.ttest_rel(x, y, alternative=alternative)) if n >= 2 else None
            nz = int(np.count_nonzero(d))
            p_w = float(stats.wilcoxon(d, alternative=alternative).pvalue) if nz >= 2 and detail else None
            boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n >= 2 and detail else None
            se, df = (d.std(ddof=1) / math.sqrt(n), n - 1) if n >= 2 else (None, None)
        else:
            n = min(x.size, y.size)
            p_perm, min_perm = permutation_test_2samp(x, y, alternative, rng=rng)
            ok = x.size >= 2 and y.size >= 2
            p_t = _t_p(stats.ttest_ind(x, y, equal_var=False, alternative=alternative)) if ok else None
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
    """Metric values by (dataset, backbone, label) -> {seed: value}; "adapter" is the rank selected
    on validation per pair (`selected`: (dataset, backbone) -> (rank, mean best_val_acc1))."""
    metric: str
    cells: dict
    selected: dict
    source: Path | None = None
    notes: tuple = ()

    def pairs(self) -> list[tuple[str, str]]:
        return sorted({(d, b) for d, b, _ in self.cells})

    def labels(self, pair: tuple[str, str] | None = None) -> list[str]:
        found = {lab for d, b, lab in self.cells if pair is None or (d, b) == pair}
        return sorted(found, key=_label_key)

    def values(self, pair: tuple[str, str], label: str) -> dict[int, float]:
        return self.cells.get((*pair, label), {})

    def ranks(self, pair: tuple[str, str]) -> list[int]:
        """Adapter ranks of the default variant run on this pair, ascending."""
        return _ranks(self.labels(pair))


def _ranks(labels) -> list[int]:
    return sorted(int(lab[9:]) for lab in labels if lab.startswith("adapter-r") and lab[9:].isdigit())


def _label_key(label: str):
    if label == "adapter":
        return (0, 0, "")
    if label.startswith("adapter-r"):
        rank, _, rest = label[9:].partition("-")
        return (1, int(rank) if rank.isdigit() else 0, rest)
    return ({"full": 2, "head": 3}.get(label, 4), 0, label)


def _label(row: dict) -> str:
    if row["method"] != "adapter":
        return str(row["method"])
    if row.get("rank") is None:
        raise UserError(f"{row.get('run') or row['dataset']}: an adapter row without a rank")
    extra = [str(row[k]).replace(":", "") for k, v in DEFAULT_VARIANT.items() if row.get(k) not in (None, "", v)]
    return "-".join([f"adapter-r{int(row['rank'])}", *extra])


def table_from_rows(rows: list[dict], metric: str = "test_acc1", source: Path | None = None,
                    notes: tuple = ()) -> Table:
    """Build a Table from tidy rows (dicts with dataset, backbone, method, rank, seed, the metric and
    best_val_acc1). Rows whose status is set and not "complete", or whose metric is missing, are
    left out with a note; two rows for the same (dataset, backbone, label, seed) are an error."""
    cells, val, origin, dropped = {}, {}, {}, 0
    for row in rows:
        if row.get("status") not in (None, "", "complete") or row.get(metric) in (None, ""):
            dropped += 1
            continue
        key = (str(row["dataset"]), str(row["backbone"]), _label(row))
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
    selected = {}
    for d, b in sorted({(d, b) for d, b, _ in cells}):
        cands = {}
        for (dd, bb, lab), seeds in val.items():
            if (dd, bb) == (d, b) and lab.startswith("adapter-r") and lab[9:].isdigit():
                if all(v is not None for v in seeds.values()):
                    cands[int(lab[9:])] = float(np.mean(list(seeds.values())))
        ranks = _ranks(lab for dd, bb, lab in cells if (dd, bb) == (d, b))
        if ranks and len(cands) == len(ranks):
            best = max(cands.values())
            rank = min(r for r, v in cands.items() if v == best)
            selected[(d, b)] = (rank, best)
            cells[(d, b, "adapter")] = cells[(d, b, f"adapter-r{rank}")]
        elif ranks:
            notes += (f"{d}/{b}: no adapter rank selected (best_val_acc1 missing); name a rank (adapter-rN)",)
    return Table(metric, cells, selected, source, notes)


CSV_COLUMNS = ("dataset", "backbone", "method", "rank", "seed")


def read_csv(path: Path, metric: str = "test_acc1") -> list[dict]:
    """Tidy rows from a CSV with columns dataset, backbone, method, rank (empty unless adapter), seed,
    the metric, and optionally best_val_acc1, placement, blocks, init, status."""
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
    return table_from_rows(found.rows(), metric, source=source, notes=notes)


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


# -- claims ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One claim of a claims file. Methods are labels ("adapter", "adapter-r16", "head", "full")."""
    id: str
    kind: str
    text: str = ""
    a: str | None = None
    b: str | None = None
    datasets: tuple | None = None
    backbones: tuple | None = None
    alpha: float | None = None
    test: str | None = None
    correction: str | None = None
    at_least: float | None = None
    at_most: float | None = None
    k: int | None = None
    m: int | None = None
    ranks: tuple | None = None
    diminishing: bool = False

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, False, "")}


_COMMON = {"id", "kind", "text", "alpha", "test", "correction", "datasets", "backbones"}
_KIND_FIELDS = {  # kind -> (required, optional)
    "better_all": ({"a", "b"}, set()),
    "mean_diff": ({"a", "b"}, {"at_least", "at_most"}),
    "wins": ({"a", "b", "k"}, {"m"}),
    "monotone": (set(), {"ranks", "diminishing"}),
    "elbow": ({"at_most"}, set()),
}
_TYPES = {"id": str, "kind": str, "text": str, "a": str, "b": str, "test": str, "correction": str,
          "alpha": float, "at_least": float, "at_most": float, "k": int, "m": int, "diminishing": bool,
          "datasets": [str], "backbones": [str], "ranks": [int]}
_TOP = {"alpha", "test", "correction", "description", "claim"}


def _typed(value, kind, where: str):
    name = kind.__name__ if isinstance(kind, type) else f"a list of {kind[0].__name__}"
    if isinstance(kind, list):
        if not isinstance(value, list) or not value:
            raise UserError(f"{where} must be {name}s, got {value!r}")
        return tuple(_typed(v, kind[0], where) for v in value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where} must be {'a number' if kind is float else 'an integer' if kind is int else name}, "
                    f"got {value!r}")


def parse_claims(doc: dict, name: str = "claims") -> list[Claim]:
    """Validate a parsed claims document; file-level alpha/test/correction fill the claims' own."""
    unknown = set(doc) - _TOP
    if unknown:
        raise UserError(f"{name}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                        f"(expected {', '.join(sorted(_TOP))})")
    defaults = {}
    for key in ("alpha", "test", "correction"):
        if key in doc:
            defaults[key] = _check_value(key, _typed(doc[key], _TYPES[key], f"{name}: {key}"), f"{name}: {key}")
    raw = doc.get("claim")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise UserError(f"{name}: no claims (write each as a [[claim]] table with id and kind)")
    claims, seen = [], set()
    for i, c in enumerate(raw, start=1):
        cid = c.get("id")
        label = f"{name}: claim {cid!r}" if isinstance(cid, str) and cid else f"{name}: claim #{i}"
        for req in ("id", "kind"):
            if req not in c:
                raise UserError(f"{label}: missing field '{req}'")
        kind = _typed(c["kind"], str, f"{label}: field 'kind'")
        if kind not in KINDS:
            raise UserError(f"{label}: field 'kind' {kind!r} is not one of {', '.join(KINDS)}")
        required, optional = _KIND_FIELDS[kind]
        for key in c:
            if key not in _COMMON | required | optional:
                raise UserError(f"{label}: field '{key}' does not apply to kind '{kind}' "
                                f"(allowed: {', '.join(sorted(_COMMON | required | optional))})")
        for req in sorted(required):
            if req not in c:
                raise UserError(f"{label}: kind '{kind}' needs field '{req}'")
        values = {k: _check_value(k, _typed(v, _TYPES[k], f"{label}: field '{k}'"), f"{label}: field '{k}'")
                  for k, v in c.items()}
        if values["id"] in seen:
            raise UserError(f"{label}: duplicate id")
        seen.add(values["id"])
        claim = Claim(**{**defaults, **values})
        _check_claim(claim, label)
        claims.append(claim)
    return claims


def _check_value(key: str, v, where: str):
    if key == "alpha" and not 0 < v < 1:
        raise UserError(f"{where} must be in (0, 1), got {v}")
    if key == "test" and v not in TESTS:
        raise UserError(f"{where} {v!r} is not one of {', '.join(TESTS)}")
    if key == "correction" and v not in CORRECTIONS:
        raise UserError(f"{where} {v!r} is not one of {', '.join(CORRECTIONS)}")
    if key in ("k", "m") and v < 1:
        raise UserError(f"{where} must be at least 1, got {v}")
    if key == "ranks":
        if any(r < 1 for r in v) or len(set(v)) != len(v):
            raise UserError(f"{where} must be distinct positive ranks, got {list(v)}")
        return tuple(sorted(v))
    if key == "id" and not v.strip():
        raise UserError(f"{where} is empty")
    return v


def _check_claim(c: Claim, label: str) -> None:
    if c.a is not None and c.a == c.b:
        raise UserError(f"{label}: fields 'a' and 'b' name the same method {c.a!r}")
    if c.kind == "mean_diff":
        if c.at_least is None and c.at_most is None:
            raise UserError(f"{label}: kind 'mean_diff' needs field 'at_least' or 'at_most'")
        if c.at_least is not None and c.at_most is not None and c.at_least >= c.at_most:
            raise UserError(f"{label}: field 'at_least' ({c.at_least}) must be below 'at_most' ({c.at_most})")
    if c.kind == "wins" and c.m is not None and c.k > c.m:
        raise UserError(f"{label}: field 'k' ({c.k}) exceeds 'm' ({c.m})")
    if c.kind == "monotone" and c.ranks is not None and len(c.ranks) < 3:
        raise UserError(f"{label}: field 'ranks' needs at least 3 ranks for a trend test")
    if c.kind == "elbow" and c.at_most <= 0:
        raise UserError(f"{label}: field 'at_most' must be a positive rank")


def load_claims(path: Path) -> list[Claim]:
    """Read and validate a claims TOML file. Schema (every claim may set text, alpha, test,
    correction, datasets, backbones; file-level alpha/test/correction are defaults):

        alpha = 0.05
        [[claim]]
        id = "adapter-beats-head"
        kind = "better_all"            # a > b on every pair in scope (one-sided, each at alpha)
        a = "adapter"
        b = "head"
        [[claim]]  kind = "mean_diff"  a, b, at_least and/or at_most   (mean over pairs of a - b)
        [[claim]]  kind = "wins"       a, b, k, optional m             (a > b on >= k of m pairs)
        [[claim]]  kind = "monotone"   optional ranks, diminishing     (accuracy rises with rank)
        [[claim]]  kind = "elbow"      at_most                         (capacity elbow <= rank)
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    return parse_claims(doc, str(path))


@dataclass(frozen=True)
class ClaimResult:
    id: str
    kind: str
    verdict: str                 # "supported" | "not supported" | UNDERPOWERED | "inconclusive"
    summary: str                 # one sentence with the numbers behind the verdict
    alpha: float
    text: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "details"}, **d["details"]}


@dataclass(frozen=True)
class _Settings:
    alpha: float
    test: str
    correction: str
    n_boot: int
    allow_unpaired: bool
    runs_dir: Path | None
    out_dir: Path | None


def _match(name: str, available: list[str], what: str, cid: str) -> str:
    """A claim's dataset/backbone name to the data's: exact (any case), or a prefix before "_"
    ("vit_small" -> "vit_small_patch16_224")."""
    n = name.lower()
    hits = [v for v in available if v.lower() == n] or [v for v in available if v.lower().startswith(n + "_")]
    if not hits:
        raise UserError(f"claim {cid!r}: {what} {name!r} not in the data (have: {', '.join(available)})")
    if len(hits) > 1:
        raise UserError(f"claim {cid!r}: {what} {name!r} is ambiguous ({', '.join(hits)})")
    return hits[0]


def _scope(claim: Claim, table: Table, labels: list[str]) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs a claim covers; each must have runs of every label in `labels`."""
    pairs = table.pairs()
    all_d, all_b = sorted({d for d, _ in pairs}), sorted({b for _, b in pairs})
    ds = [_match(n, all_d, "dataset", claim.id) for n in claim.datasets] if claim.datasets else all_d
    bs = [_match(n, all_b, "backbone", claim.id) for n in claim.backbones] if claim.backbones else all_b
    if claim.datasets and claim.backbones:
        missing = [f"{d}/{b}" for d in ds for b in bs if (d, b) not in pairs]
        if missing:
            raise UserError(f"claim {claim.id!r}: pair(s) not in the data: {', '.join(missing)}")
    scope = [p for p in pairs if p[0] in ds and p[1] in bs]
    known = table.labels()
    for lab in labels:
        if lab not in known:
            hint = " (no rank could be selected on validation; name one, e.g. adapter-r16)" if lab == "adapter" else ""
            raise UserError(f"claim {claim.id!r}: method {lab!r} not in the data{hint} (have: {', '.join(known)})")
        lacking = [f"{d}/{b}" for d, b in scope if not table.values((d, b), lab)]
        if lacking:
            raise UserError(f"claim {claim.id!r}: no {lab} runs on {', '.join(lacking)}; "
                            "restrict the claim with datasets/backbones or run them")
    if not scope:
        raise UserError(f"claim {claim.id!r}: no dataset/backbone pair in scope")
    return scope


def _pstr(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.1e}" if 0 < p < 1e-3 else ("0" if p == 0 else f"{p:.3g}")


def _pair_tests(claim: Claim, table: Table, s: _Settings, rng) -> tuple[list, list[Comparison]]:
    scope = _scope(claim, table, [claim.a, claim.b])
    units = [paired_values(table, p, claim.a, claim.b, s.allow_unpaired) for p in scope]
    comps = [compare(x, y, paired=pd, alternative="greater", test=s.test, rng=rng, level=1 - s.alpha,
                     dataset=p[0], backbone=p[1], a=claim.a, b=claim.b, seeds=sd, detail=False)
             for p, (x, y, sd, pd) in zip(scope, units)]
    return units, comps


def _seeds_text(comps: list[Comparison]) -> str:
    ns = sorted({c.n for c in comps})
    return f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds"


def _claim_better_all(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """Intersection-union test: a > b on every pair iff each one-sided test rejects at alpha."""
    _, comps = _pair_tests(claim, table, s, rng)
    m = len(comps)
    best = max(c.min_p for c in comps)
    n_pos = sum(c.mean_diff > 0 for c in comps)
    lo = min(comps, key=lambda c: c.mean_diff)
    worst = max(comps, key=lambda c: c.p)
    test = f"one-sided {_TEST_NAME[s.test]}"
    n_sig_t = sum(c.p_t is not None and c.p_t <= s.alpha for c in comps)
    head = (f"{claim.a} beat {claim.b} on {n_pos}/{m} pairs by mean "
            f"(smallest difference {lo.mean_diff:+.2f} on {lo.pair})")
    if best > s.alpha:
        v = UNDERPOWERED
        summary = (f"{head}; with {_seeds_text(comps)} the {test} cannot go below p = {_pstr(best)} "
                   f"> alpha = {s.alpha} (one-sided paired t-tests: {n_sig_t}/{m} pairs p <= alpha)")
    elif worst.p <= s.alpha:
        v = "supported"
        summary = f"{head}; every pair significant ({test}, largest p = {_pstr(worst.p)} on {worst.pair})"
    else:
        v = "not supported"
        fails = sorted((c for c in comps if c.p > s.alpha), key=lambda c: -c.p)
        listed = ", ".join(f"{c.pair} ({c.mean_diff:+.2f}, p = {_pstr(c.p)})" for c in fails[:3])
        summary = (f"{head}; significant ({test}) on {m - len(fails)}/{m} pairs, not on {listed}"
                   + (f" and {len(fails) - 3} more" if len(fails) > 3 else ""))
    return ClaimResult(claim.id, claim.kind, v, summary, s.alpha, claim.text, {
        "a": claim.a, "b": claim.b, "test": s.test, "min_attainable_p": best, "max_p": worst.p,
        "pairs": [_brief(c) for c in comps]})


def _brief(c: Comparison) -> dict:
    return {"dataset": c.dataset, "backbone": c.backbone, "n": c.n, "mean_diff": c.mean_diff,
            "p": c.p, "p_t": c.p_t, "min_p": c.min_p, **({"p_adj": c.p_adj} if c.p_adj is not None else {})}


def _claim_mean_diff(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """One-sided test(s) of the mean over pairs of the pair mean differences against the bound(s)
    (both bounds: two one-sided tests, p = the larger); the interval is a hierarchical bootstrap."""
    units, comps = _pair_tests(claim, table, s, rng)
    units3 = [(x, y, pd) for x, y, _, pd in units]
    diffs = np.array([c.mean_diff for c in comps])
    est = float(diffs.mean())
    boot = hierarchical_bootstrap(units3, rng=rng, n_boot=s.n_boot)
    ci = tuple(float(v) for v in np.quantile(boot, (s.alpha / 2, 1 - s.alpha / 2)))
    ps, mins = [], []
    for bound, alt in ((claim.at_least, "greater"), (claim.at_most, "less")):
        if bound is None:
            continue
        if len(comps) == 1:  # one pair: the seeds are the units
            x, y, sd, pd = units[0]
            c = compare(x - bound, y, paired=pd, alternative=alt, test=s.test, rng=rng, detail=False)
            p, mn = c.p, c.min_p
        elif s.test == "perm":
            p, mn = sign_flip_test(diffs - bound, alt, rng=rng)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p, mn = _t_p(stats.ttest_1samp(diffs - bound, 0.0, alternative=alt)), 0.0
        ps.append(p)
        mins.append(mn)
    p, best = max(ps), max(mins)
    units_text = f"{len(comps)} pair means" if len(comps) > 1 else f"{comps[0].n} seeds"
    bound_text = (f">= {claim.at_least:g}" if claim.at_most is None else
                  f"<= {claim.at_most:g}" if claim.at_least is None else
                  f"within [{claim.at_least:g}, {claim.at_most:g}]")
    v = UNDERPOWERED if best > s.alpha else ("supported" if p <= s.alpha else "not supported")
    summary = (f"mean {claim.a} - {claim.b} over {len(comps)} pairs = {est:+.2f} points "
               f"({1 - s.alpha:.0%} hierarchical-bootstrap CI [{ci[0]:+.2f}, {ci[1]:+.2f}]); "
               f"claim {bound_text}: one-sided {_TEST_NAME[s.test]} over {units_text} p = {_pstr(p)}"
               + (f", which cannot go below {_pstr(best)}" if best > s.alpha else ""))
    return ClaimResult(claim.id, claim.kind, v, summary, s.alpha, claim.text, {
        "a": claim.a, "b": claim.b, "test": s.test, "mean_diff": est, "ci": ci, "p": p,
        "min_attainable_p": best, "at_least": claim.at_least, "at_most": claim.at_most,
        "pairs": [_brief(c) for c in comps]})


def _claim_wins(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """a beats b on >= k pairs: the number of one-sided wins significant after the correction
    (FWER under Holm, so the count of true wins is at least this with probability 1 - alpha)."""
    _, comps = _pair_tests(claim, table, s, rng)
    m = len(comps)
    if claim.m is not None and claim.m != m:
        raise UserError(f"claim {claim.id!r}: field 'm' is {claim.m} but {m} pairs are in scope")
    if claim.k > m:
        raise UserError(f"claim {claim.id!r}: field 'k' ({claim.k}) exceeds the {m} pairs in scope")
    p_adj = adjust([c.p for c in comps], s.correction)
    comps = [replace(c, p_adj=float(q)) for c, q in zip(comps, p_adj)]
    n_sig = int(sum(q <= s.alpha for q in p_adj))
    point = sum(c.mean_diff > 0 for c in comps)
    best = best_adjusted(sorted(c.min_p for c in comps)[claim.k - 1], m, s.correction)
    v = UNDERPOWERED if best > s.alpha else ("supported" if n_sig >= claim.k else "not supported")
    summary = (f"{claim.a} beat {claim.b} on {point}/{m} pairs by mean, {n_sig} significant after {s.correction} "
               f"(one-sided {_TEST_NAME[s.test]}, alpha = {s.alpha}); the claim needs {claim.k}"
               + (f"; with {_seeds_text(comps)} and {m} pairs the best attainable adjusted p is {_pstr(best)}"
                  if best > s.alpha else ""))
    return ClaimResult(claim.id, claim.kind, v, summary, s.alpha, claim.text, {
        "a": claim.a, "b": claim.b, "test": s.test, "correction": s.correction, "k": claim.k, "m": m,
        "wins_by_mean": point, "wins_significant": n_sig, "min_attainable_p": best,
        "pairs": [_brief(c) for c in comps]})


def _claim_monotone(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """Page's L trend test over blocks = (pair, seed), treatments = ranks in increasing order; with
    `diminishing`, also a one-sided test that the gain per doubling of rank falls (per block: minus
    the least-squares slope of the gains over the steps; tested over blocks as in `s.test`)."""
    scope = _scope(claim, table, [])
    ranks = list(claim.ranks) if claim.ranks else sorted(set.intersection(*(set(table.ranks(p)) for p in scope)))
    if len(ranks) < 3:
        raise UserError(f"claim {claim.id!r}: a trend needs at least 3 adapter ranks common to every pair "
                        f"in scope, found {ranks or 'none'}")
    labels = [f"adapter-r{r}" for r in ranks]
    _scope(claim, table, labels)
    blocks, curves = [], []
    for p in scope:
        seeds = [set(table.values(p, lab)) for lab in labels]
        if any(sd != seeds[0] for sd in seeds):
            raise UserError(f"{p[0]}/{p[1]}: ranks {', '.join(map(str, ranks))} were not all run with the same "
                            f"seeds ({'; '.join(f'r{r}: {sorted(sd)}' for r, sd in zip(ranks, seeds))})")
        rows = np.array([[table.values(p, lab)[sd] for lab in labels] for sd in sorted(seeds[0])])  # (n, K)
        blocks.append(rows)
        curves.append(rows.mean(axis=0))
    data = np.concatenate(blocks)                                               # (N, K)
    n_blocks, k = data.shape
    min_trend = math.factorial(k) ** -float(n_blocks)
    p_trend = float(stats.page_trend_test(data).pvalue) if n_blocks >= 2 else 1.0
    if n_blocks < 2:
        min_trend = 1.0
    monotone = sum(bool(np.all(np.diff(c) >= 0)) for c in curves)
    ps, mins = [p_trend], [min_trend]
    detail = {"ranks": ranks, "blocks": n_blocks, "p_trend": p_trend, "pairs_monotone_in_mean": monotone,
              "pairs": len(scope)}
    text = (f"accuracy vs rank {'<'.join(map(str, ranks))}: Page's L over {n_blocks} blocks "
            f"({len(scope)} pairs x seeds) "
            f"p = {_pstr(p_trend)}; mean curve non-decreasing on {monotone}/{len(scope)} pairs")
    if claim.diminishing:
        gains = np.diff(data, axis=1) / np.diff(np.log2(ranks))                 # (N, K-1) per doubling
        j = np.arange(k - 1) - (k - 2) / 2
        contrast = -(gains @ j) / (j @ j)                                       # (N,) > 0: gains fall
        if s.test == "perm":
            p_dim, min_dim = sign_flip_test(contrast, "greater", rng=rng)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p_dim, min_dim = _t_p(stats.ttest_1samp(contrast, 0.0, alternative="greater")), 0.0
        ps.append(p_dim)
        mins.append(min_dim)
        mean_gains = gains.mean(axis=0)
        detail.update(p_diminishing=p_dim, gain_per_doubling=mean_gains.tolist())
        text += (f"; gain per doubling {', '.join(f'{g:+.2f}' for g in mean_gains)} "
                 f"(falling: one-sided {_TEST_NAME[s.test]} over blocks p = {_pstr(p_dim)})")
    best, p = max(mins), max(ps)
    v = UNDERPOWERED if best > s.alpha else ("supported" if p <= s.alpha else "not supported")
    if best > s.alpha:
        text += f"; with {n_blocks} blocks no test here can go below p = {_pstr(best)}"
    return ClaimResult(claim.id, claim.kind, v, text, s.alpha, claim.text,
                       {**detail, "test": s.test, "min_attainable_p": best})


def _claim_elbow(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """Every pair's capacity-model elbow interval (95%, from analysis.capacity, reference adapter
    configuration) lies at or below `at_most`.

    An unbounded interval (elbow beyond the search horizon, or not fitted) counts as above; a pair
    the capacity analysis did not fit at all makes the verdict "inconclusive"."""
    if s.runs_dir is None:
        raise UserError(f"claim {claim.id!r}: elbow claims need run directories, not a CSV table")
    try:
        from . import capacity
    except ModuleNotFoundError:
        raise UserError(f"claim {claim.id!r}: elbow claims need adaptertune.analysis.capacity, "
                        "which this installation lacks") from None
    scope = _scope(claim, table, [])
    with tempfile.TemporaryDirectory() as tmp:  # the capacity analysis' own files are not ours to write
        groups = capacity.analyze_runs(s.runs_dir, Path(tmp), plot=False).to_dict()["groups"]
    found = {}
    for g in groups:  # the reference configuration of each pair; ablation sweeps are not the claim's
        if all(g.get(k) in (None, v) for k, v in _CAPACITY_DEFAULT.items()):
            found.setdefault((g.get("dataset"), g.get("backbone")), g)
    rows, lost = [], []
    for p in scope:
        g = found.get(p)
        if g is None:
            lost.append(f"{p[0]}/{p[1]}")
            continue
        ci = [math.inf if c is None else float(c) for c in (g.get("elbow_ci") or (None, None))]
        elbow = math.inf if g.get("elbow") is None else float(g["elbow"])  # None: beyond the horizon or no fit
        rows.append({"dataset": p[0], "backbone": p[1], "elbow": elbow, "elbow_ci": tuple(ci)})
    above = [r for r in rows if r["elbow_ci"][1] > claim.at_most]
    v = "inconclusive" if lost else ("supported" if not above else "not supported")
    shown = ", ".join("{}/{} ({:.3g} [{:.3g}, {:.3g}])".format(r["dataset"], r["backbone"], r["elbow"], *r["elbow_ci"])
                      for r in above[:3])
    summary = (f"capacity-model elbow 95% interval at or below rank {claim.at_most:g} "
               f"on {len(rows) - len(above)}/{len(scope)} pairs"
               + (f"; above on {shown}" if above else "")
               + (f"; no capacity fit for {', '.join(lost)}" if lost else ""))
    return ClaimResult(claim.id, claim.kind, v, summary, s.alpha, claim.text,
                       {"at_most": claim.at_most, "pairs": rows, "not_located": lost})


_EVALUATE = {"better_all": _claim_better_all, "mean_diff": _claim_mean_diff, "wins": _claim_wins,
             "monotone": _claim_monotone, "elbow": _claim_elbow}


def evaluate_claim(claim: Claim, table: Table, *, alpha: float = 0.05, test: str = "perm",
                   correction: str = "holm", n_boot: int = 2000, seed: int = 0, allow_unpaired: bool = False,
                   runs_dir: Path | None = None, out_dir: Path | None = None, index: int = 0) -> ClaimResult:
    """One claim's verdict; the claim's own alpha/test/correction override the arguments."""
    s = _Settings(claim.alpha or alpha, claim.test or test, claim.correction or correction, n_boot,
                  allow_unpaired, runs_dir, out_dir)
    return _EVALUATE[claim.kind](claim, table, s, np.random.default_rng([seed, 100 + index]))


# -- the report ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignificanceReport:
    metric: str
    alpha: float
    test: str
    correction: str
    n_boot: int
    seed: int
    selected: tuple                 # dicts {"dataset", "backbone", "rank", "val_acc1"}
    comparisons: tuple              # Comparison, two-sided, corrected over all of them
    aggregates: tuple               # Aggregate per method pair
    claims: tuple = ()              # ClaimResult
    notes: tuple = ()
    figures: tuple = ()             # file names written beside significance.json

    def to_dict(self) -> dict:
        return {"metric": self.metric, "alpha": self.alpha, "test": self.test, "correction": self.correction,
                "n_boot": self.n_boot, "seed": self.seed,
                "selection": "adapter = per pair, the rank with the highest mean best_val_acc1 over seeds "
                             "(validation only; test accuracy is never used to select)",
                "selected": list(self.selected), "comparisons": [c.to_dict() for c in self.comparisons],
                "aggregates": [a.to_dict() for a in self.aggregates],
                "claims": [c.to_dict() for c in self.claims], "notes": list(self.notes),
                "figures": list(self.figures)}

    # rows shared by the text, Markdown and LaTeX renderings
    def _comparison_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["pair", "a - b", "n", "diff", f"{1 - self.alpha:.0%} CI (boot)", "p_t", "p_perm", "p_adj",
                "g", "min p", "verdict"]
        rows = [[c.pair, f"{c.a} - {c.b}", f"{c.n}{'' if c.paired else 'u'}", f"{c.mean_diff:+.2f}",
                 _ci(c.ci), _pstr(c.p_t), _pstr(c.p_perm), _pstr(c.p_adj),
                 "-" if c.hedges_g is None else f"{c.hedges_g:+.2f}", _pstr(c.min_p), c.verdict]
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
                         f"{g.wins}/{g.ties}/{g.losses}", _pstr(g.p_sign)])
            if mixed:
                fit = g.mixed or {}
                rows[-1].append("-" if fit.get("coef") is None else f"{fit['coef']:+.2f} (p = {_pstr(fit['p'])})")
        return head + (["MixedLM"] if mixed else []), rows

    def _selected_text(self) -> str:
        by_rank = {}
        for sel in self.selected:
            by_rank[sel["rank"]] = by_rank.get(sel["rank"], 0) + 1
        return ", ".join(f"r{r} on {k} pair{'s' * (k > 1)}" for r, k in sorted(by_rank.items())) or "none"

    def table(self) -> str:
        """Plain text: selection, pairwise comparisons, aggregates, one verdict per claim."""
        out = [f"significance of {self.metric}: verdicts by the {_TEST_NAME[self.test]}, "
               f"{self.correction} correction over {len(self.comparisons)} comparisons, alpha = {self.alpha}",
               f"adapter = per pair, the rank with the best mean validation accuracy (test accuracy never used): "
               f"{self._selected_text()}"]
        for n in sorted({c.n for c in self.comparisons if c.paired}):
            c = next(c for c in self.comparisons if c.paired and c.n == n)
            out.append(f"with {n} paired seeds the smallest two-sided p is {_pstr(c.min_p_by_test['perm'])} for the "
                       f"exact sign-flip and Wilcoxon tests; the t-test can go lower by assuming normal seed noise")
        if self.comparisons:
            out += ["", _text_table(*self._comparison_rows())]
        if self.aggregates:
            out += ["", "across pairs:", _text_table(*self._aggregate_rows())]
        for c in self.claims:
            out += ["", f"[{c.verdict}] {c.id}: {c.text}".rstrip(": "), f"    {c.summary}"]
        if self.notes:
            out += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        """A Markdown section: comparisons, aggregates and claims as tables."""
        out = ["## Significance", "",
               f"Metric `{self.metric}`; verdicts by the {_TEST_NAME[self.test]} with {self.correction} "
               f"correction over {len(self.comparisons)} comparisons at alpha = {self.alpha}. "
               "`adapter` is the rank with the best mean validation accuracy per pair "
               f"({self._selected_text()}); test accuracy is never used to select. A result is "
               "*inconclusive (underpowered)* when no data with this many seeds could reach alpha.", ""]
        if self.comparisons:
            out += ["### Pairwise comparisons", "", _md_table(*self._comparison_rows()), ""]
            out += [f"![paired differences with {1 - self.alpha:.0%} bootstrap intervals]({f})\n" for f in self.figures]
        if self.aggregates:
            out += ["### Across pairs", "", _md_table(*self._aggregate_rows()), ""]
        if self.claims:
            out += ["### Claims", "", _md_table(["claim", "verdict", "evidence"],
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


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows])


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[v.replace("|", r"\|") for v in r] for r in [head, *rows]]
    return "\n".join(["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in esc[1:]])


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
        "Γ": r"$\Gamma$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "α": r"$\alpha$", "−": "-"}


def _tex(s: str) -> str:
    parts = str(s).replace(">=", "\0g").replace("<=", "\0l")
    return "".join(_TEX.get(ch, ch) for ch in parts).replace("\0g", r"$\geq$").replace("\0l", r"$\leq$")


# -- entry points ----------------------------------------------------------------------------------

def _default_labels(table: Table) -> list[str]:
    """The selected adapter and every baseline; a sweep of adapters alone compares its ranks."""
    labels = table.labels()
    adapters = [lab for lab in labels if lab.startswith("adapter-r")]
    others = [lab for lab in labels if not lab.startswith("adapter")]
    chosen = (["adapter"] if "adapter" in labels else adapters) + others
    return chosen if len(chosen) >= 2 else adapters


def analyze(table: Table, claims: list[Claim] = (), *, alpha: float = 0.05, test: str = "perm",
            correction: str = "holm", methods: list[str] | None = None, n_boot: int = 2000, seed: int = 0,
            mixed: bool = False, allow_unpaired: bool = False, runs_dir: Path | None = None,
            out_dir: Path | None = None) -> SignificanceReport:
    """Compare every pair of `methods` (default: the selected adapter and every baseline) on each
    (dataset, backbone) pair where both were run, correct over all comparisons, aggregate per method
    pair, and evaluate `claims`."""
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
                              allow_unpaired=allow_unpaired, runs_dir=runs_dir, out_dir=out_dir, index=i)
               for i, c in enumerate(claims)]
    selected = tuple({"dataset": d, "backbone": b, "rank": r, "val_acc1": v}
                     for (d, b), (r, v) in sorted(table.selected.items()))
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
        claims = load_claims(Path(claims))
    report = analyze(table, claims or (), runs_dir=table.source, out_dir=out_dir, **options)
    if plot and report.comparisons:
        from . import plots

        png = plots.plot_significance([c.to_dict() for c in report.comparisons], out_dir / "significance.png",
                                      level=1 - report.alpha)
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


def _write_csv(path: Path, comps) -> None:
    import io

    cols = ["dataset", "backbone", "a", "b", "n", "paired", "mean_a", "mean_b", "mean_diff", "ci_lo", "ci_hi",
            "ci_t_lo", "ci_t_hi", "p_t", "p_perm", "p_wilcoxon", "hedges_g", "test", "p", "min_p", "p_adj", "verdict"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for c in comps:
        d = c.to_dict()
        d.update(ci_lo=(c.ci or (None, None))[0], ci_hi=(c.ci or (None, None))[1],
                 ci_t_lo=(c.ci_t or (None, None))[0], ci_t_hi=(c.ci_t or (None, None))[1])
        w.writerow(["" if d[k] is None else d[k] for k in cols])
    runs.write_text(path, buf.getvalue())


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
    source = Path(args.runs)
    out = args.out or (source if source.is_dir() else source.parent) / "analysis"
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
