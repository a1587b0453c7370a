"""Claims about a study, read from a TOML file, and one verdict each from the multi-seed statistics.

`load_claims` reads and validates a claims file (claim_schema.py; schema in its docstring;
analysis/paper_claims.toml is the reference study's); `evaluate_claim` tests one claim on a
`significance.Table`. A verdict is "supported" (the claim's test rejects its null at alpha), "not
supported" (the test could have, and did not) or "inconclusive (underpowered)" (no data of this
size could have supported it). The tests, all one-sided:

    better_all  a > b on each pair in scope, each at alpha (intersection-union: no correction needed)
    mean_diff   mean over pairs of the pair mean differences vs the bound(s), pairs as the units
                (two bounds: two one-sided tests); interval: hierarchical bootstrap (pairs, then seeds)
    wins        per-pair wins significant after the correction (Holm: family-wise) number >= k
    monotone    Page's L, blocks = (pair, seed), treatments = ranks ascending; with diminishing, the
                fall of the gain per doubling (minus its slope over the steps), blocks as the units
    elbow       the capacity analysis' 95% elbow interval is <= the rank on every pair in scope
    better_matched  family a > family b at every matched budget in scope (budgets.py's matching rule,
                within `factor`), each at alpha (intersection-union, as better_all)

Imports no torch and no plotting.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import UserError
from .aggregates import hierarchical_bootstrap
from .claim_schema import KINDS, Claim, load_claims, parse_claims  # noqa: F401  (re-exported)
from .stattests import (TEST_NAMES, UNDERPOWERED, Comparison, adjust, best_adjusted, compare, sign_flip_test,
                        t_pvalue)
from .tidy import Table, paired_values
from .tables import p_value

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


def _pairs(claim: Claim, table: Table) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs named by a claim's datasets and backbones (default: all)."""
    pairs = table.pairs()
    all_d, all_b = sorted({d for d, _ in pairs}), sorted({b for _, b in pairs})
    ds = [_match(n, all_d, "dataset", claim.id) for n in claim.datasets] if claim.datasets else all_d
    bs = [_match(n, all_b, "backbone", claim.id) for n in claim.backbones] if claim.backbones else all_b
    if claim.datasets and claim.backbones:
        missing = [f"{d}/{b}" for d in ds for b in bs if (d, b) not in pairs]
        if missing:
            raise UserError(f"claim {claim.id!r}: pair(s) not in the data: {', '.join(missing)}")
    return [p for p in pairs if p[0] in ds and p[1] in bs]


def _scope(claim: Claim, table: Table, labels: list[str]) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs a claim covers; each must have runs of every label in `labels`."""
    scope = _pairs(claim, table)
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
    return _every(claim, comps, s, "pairs", lambda c: c.pair)


def _claim_better_matched(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """Intersection-union test over every budget match of families a and b (`budgets.matches`) on the
    pairs in scope: a's configuration beats b's at each, one-sided at alpha."""
    from .budgets import FACTOR, family, matches

    scope = _pairs(claim, table)
    if not scope:
        raise UserError(f"claim {claim.id!r}: no dataset/backbone pair in scope")
    factor = claim.factor or FACTOR
    known = sorted({family(lab) for p in scope for lab in table.configurations(p)})
    for name in (claim.a, claim.b):
        if name not in known:
            raise UserError(f"claim {claim.id!r}: family {name!r} not in the data (have: {', '.join(known)})")
    found = []
    for m in matches(table, factor):
        if (m.dataset, m.backbone) in scope and {m.family_a, m.family_b} == {claim.a, claim.b}:
            a, b = (m.a, m.b) if m.family_a == claim.a else (m.b, m.a)
            found.append((m.dataset, m.backbone, a, b))
    if not found:
        raise UserError(f"claim {claim.id!r}: no configurations of {claim.a} and {claim.b} within {factor:g}x of "
                        "each other's trainable parameters on any pair in scope")
    comps = []
    for d, bb, a, b in found:
        x, y, sd, pd = paired_values(table, (d, bb), a, b, s.allow_unpaired)
        comps.append(compare(x, y, paired=pd, alternative="greater", test=s.test, rng=rng, level=1 - s.alpha,
                             dataset=d, backbone=bb, a=a, b=b, seeds=sd, detail=False))
    result = _every(claim, comps, s, "matched budgets", lambda c: f"{c.pair} {c.a} vs {c.b}")
    return replace(result, details={**result.details, "factor": factor,
                                    "matches": [{**_brief(c), "a": c.a, "b": c.b} for c in comps]})


def _every(claim: Claim, comps: list[Comparison], s: _Settings, what: str, name) -> ClaimResult:
    """The verdict that a > b on every comparison (units: `what`, each named by name(comparison))."""
    m = len(comps)
    best = max(c.min_p for c in comps)
    n_pos = sum(c.mean_diff > 0 for c in comps)
    lo = min(comps, key=lambda c: c.mean_diff)
    worst = max(comps, key=lambda c: c.p)
    test = f"one-sided {TEST_NAMES[s.test]}"
    n_sig_t = sum(c.p_t is not None and c.p_t <= s.alpha for c in comps)
    head = (f"{claim.a} beat {claim.b} on {n_pos}/{m} {what} by mean "
            f"(smallest difference {lo.mean_diff:+.2f} on {name(lo)})")
    if best > s.alpha:
        v = UNDERPOWERED
        summary = (f"{head}; with {_seeds_text(comps)} the {test} cannot go below p = {p_value(best)} "
                   f"> alpha = {s.alpha} (one-sided paired t-tests: {n_sig_t}/{m} {what} p <= alpha)")
    elif worst.p <= s.alpha:
        v = "supported"
        summary = f"{head}; significant on all {m} ({test}, largest p = {p_value(worst.p)} on {name(worst)})"
    else:
        v = "not supported"
        fails = sorted((c for c in comps if c.p > s.alpha), key=lambda c: -c.p)
        listed = ", ".join(f"{name(c)} ({c.mean_diff:+.2f}, p = {p_value(c.p)})" for c in fails[:3])
        summary = (f"{head}; significant ({test}) on {m - len(fails)}/{m} {what}, not on {listed}"
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
                p, mn = t_pvalue(stats.ttest_1samp(diffs - bound, 0.0, alternative=alt)), 0.0
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
               f"claim {bound_text}: one-sided {TEST_NAMES[s.test]} over {units_text} p = {p_value(p)}"
               + (f", which cannot go below {p_value(best)}" if best > s.alpha else ""))
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
               f"(one-sided {TEST_NAMES[s.test]}, alpha = {s.alpha}); the claim needs {claim.k}"
               + (f"; with {_seeds_text(comps)} and {m} pairs the best attainable adjusted p is {p_value(best)}"
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
            f"p = {p_value(p_trend)}; mean curve non-decreasing on {monotone}/{len(scope)} pairs")
    if claim.diminishing:
        gains = np.diff(data, axis=1) / np.diff(np.log2(ranks))                 # (N, K-1) per doubling
        j = np.arange(k - 1) - (k - 2) / 2
        contrast = -(gains @ j) / (j @ j)                                       # (N,) > 0: gains fall
        if s.test == "perm":
            p_dim, min_dim = sign_flip_test(contrast, "greater", rng=rng)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p_dim, min_dim = t_pvalue(stats.ttest_1samp(contrast, 0.0, alternative="greater")), 0.0
        ps.append(p_dim)
        mins.append(min_dim)
        mean_gains = gains.mean(axis=0)
        detail.update(p_diminishing=p_dim, gain_per_doubling=mean_gains.tolist())
        text += (f"; gain per doubling {', '.join(f'{g:+.2f}' for g in mean_gains)} "
                 f"(falling: one-sided {TEST_NAMES[s.test]} over blocks p = {p_value(p_dim)})")
    best, p = max(mins), max(ps)
    v = UNDERPOWERED if best > s.alpha else ("supported" if p <= s.alpha else "not supported")
    if best > s.alpha:
        text += f"; with {n_blocks} blocks no test here can go below p = {p_value(best)}"
    return ClaimResult(claim.id, claim.kind, v, text, s.alpha, claim.text,
                       {**detail, "test": s.test, "min_attainable_p": best})


def _claim_elbow(claim: Claim, table: Table, s: _Settings, rng) -> ClaimResult:
    """Every pair's capacity-model elbow interval (95%, from analysis.capacity, reference adapter
    configuration) lies at or below `at_most`.

    An unbounded interval (elbow beyond the search horizon, or not fitted) counts as above; a pair
    the capacity analysis did not fit at all makes the verdict "inconclusive"."""
    if s.runs_dir is None:
        raise UserError(f"claim {claim.id!r}: elbow claims need run directories, not a CSV table")
    from . import capacity

    scope = _scope(claim, table, [])
    with tempfile.TemporaryDirectory() as tmp:  # the capacity analysis' own files are not ours to write
        groups = capacity.analyze_runs(s.runs_dir, Path(tmp), plot=False).to_dict()["groups"]
    found = {}
    for g in groups:  # the reference sweep of each pair (the table's "adapter"); other sweeps are not the claim's
        if g.get("sweep") == "adapter":
            found[(g.get("dataset"), g.get("backbone"))] = g
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
             "monotone": _claim_monotone, "elbow": _claim_elbow, "better_matched": _claim_better_matched}


def evaluate_claim(claim: Claim, table: Table, *, alpha: float = 0.05, test: str = "perm",
                   correction: str = "holm", n_boot: int = 2000, seed: int = 0, allow_unpaired: bool = False,
                   runs_dir: Path | None = None, out_dir: Path | None = None, index: int = 0) -> ClaimResult:
    """One claim's verdict; the claim's own alpha/test/correction override the arguments.

    runs_dir: the run folder the table came from (elbow claims refit the capacity model there).
    out_dir is not used: an elbow claim's capacity fit writes no files."""
    s = _Settings(claim.alpha or alpha, claim.test or test, claim.correction or correction, n_boot,
                  allow_unpaired, runs_dir)
    return _EVALUATE[claim.kind](claim, table, s, np.random.default_rng([seed, 100 + index]))
