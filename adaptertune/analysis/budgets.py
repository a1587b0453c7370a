"""Families at matched trainable-parameter budgets, and the accuracy-vs-parameters Pareto front.

A **family** is a configuration up to its capacity axis: `groups.split(label)[0]` — "adapter",
"adapter-mlp-houlsby-channel" (the Adapter+ preset), "lora-qkv+fc2", "vpt", "vpt-deep" — and a
family without one is a single configuration ("bitfit", "head", "full"). Each configuration has its
trainable-parameter count (summary.json's `trainable_params`, the same for every seed).

**The matching rule** (`match_budgets`, one definition for every analysis): on one (dataset,
backbone) pair, a configuration a of family A and a configuration b of family B are matched when
each is the other's nearest in log parameters (mutual nearest neighbours of |log(p_a / p_b)|; on a
tie, the smaller count) and their counts differ by at most `factor` (default 2×). So every
configuration is matched at most once per family pair, the rule does not depend on which family is
named first, and a family with no configuration within the factor of another's is not compared
with it (a 2×-budget match never pits head-only against full fine-tuning).

`compare_matched` tests each match over seeds with the statistics of every other comparison
(`stattests.compare`: exact sign-flip permutation, t, Wilcoxon, Hedges' g, bootstrap interval),
corrects them as one family of tests of their own (Holm or BH, as asked), and aggregates each family
pair across every match (`aggregates.aggregate`; its units are the matches, each a (pair, budget)).

`pareto_front` marks the configurations that no other beats at no more parameters.
Imports no torch and no plotting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import UserError
from . import groups
from .aggregates import aggregate
from .stattests import Comparison, adjust, best_adjusted, compare, verdict
from .tidy import paired_values

FACTOR = 2.0
RULE = ("configurations of two families matched by trainable parameters, each the other's nearest in "
        "log scale and within a factor of {factor:g}")


def family(label: str) -> str:
    """A configuration's family: its sweep label (the label without the rank), or the label itself."""
    return groups.split(label)[0]


def match_budgets(params_a, params_b, factor: float = FACTOR) -> list[tuple[int, int]]:
    """Index pairs (i, j), ascending in i, of params_a (m,) and params_b (n,) that are mutual nearest
    neighbours in log parameters and within `factor` of each other (see the module docstring)."""
    a, b = np.log(np.asarray(params_a, float)), np.log(np.asarray(params_b, float))
    if a.size == 0 or b.size == 0:
        return []
    dist = np.round(np.abs(a[:, None] - b[None, :]), 9)   # (m, n); rounded so that 2x up and 2x down tie
    near_b = [min(range(b.size), key=lambda j: (dist[i, j], b[j], j)) for i in range(a.size)]
    near_a = [min(range(a.size), key=lambda i: (dist[i, j], a[i], i)) for j in range(b.size)]
    return [(i, j) for i, j in enumerate(near_b) if near_a[j] == i and dist[i, j] <= round(math.log(factor), 9)]


@dataclass(frozen=True)
class Match:
    """Two configurations of different families on one pair, matched by trainable parameters."""
    dataset: str
    backbone: str
    family_a: str
    family_b: str
    a: str            # configuration labels
    b: str
    params_a: float
    params_b: float

    @property
    def ratio(self) -> float:
        """params_a / params_b."""
        return self.params_a / self.params_b

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def matches(table, factor: float = FACTOR) -> list[Match]:
    """Every matched pair of configurations of a significance `Table` (tidy.Table), per (dataset,
    backbone) pair and family pair (families in `groups.order`; configurations without a parameter
    count are left out)."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    out = []
    for pair in table.pairs():
        by_family: dict[str, list[tuple[str, float]]] = {}
        for label in table.configurations(pair):
            if (*pair, label) in table.params:
                by_family.setdefault(family(label), []).append((label, table.params[(*pair, label)]))
        names = sorted(by_family, key=groups.order)
        for k, fa in enumerate(names):
            for fb in names[k + 1:]:
                ca, cb = by_family[fa], by_family[fb]
                for i, j in match_budgets([p for _, p in ca], [p for _, p in cb], factor):
                    out.append(Match(pair[0], pair[1], fa, fb, ca[i][0], cb[j][0], ca[i][1], cb[j][1]))
    return out


@dataclass(frozen=True)
class MatchedComparison:
    """One match and its comparison over seeds (differences a - b)."""
    match: Match
    comparison: Comparison

    def to_dict(self) -> dict:
        return {**self.comparison.to_dict(), **self.match.to_dict()}


@dataclass(frozen=True)
class BudgetComparisons:
    """Every family pair at matched budgets: the rule, the matched comparisons (corrected together), and
    one Aggregate per family pair (a, b = the families)."""
    factor: float
    comparisons: tuple          # MatchedComparison
    aggregates: tuple           # Aggregate
    notes: tuple = ()

    @property
    def rule(self) -> str:
        return RULE.format(factor=self.factor)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "factor": self.factor, "comparisons": [c.to_dict() for c in self.comparisons],
                "aggregates": [a.to_dict() for a in self.aggregates], "notes": list(self.notes)}


def compare_matched(table, *, factor: float = FACTOR, alpha: float = 0.05, test: str = "perm",
                    correction: str = "holm", n_boot: int = 2000, rng: np.random.Generator,
                    allow_unpaired: bool = False, mixed: bool = False) -> BudgetComparisons:
    """Compare the configurations of every match (`matches`) over seeds, correct over these comparisons,
    and aggregate per family pair. A match whose seeds differ is left out with a note (unless
    allow_unpaired, then Welch etc.)."""
    comps, units, notes = [], {}, []
    for m in matches(table, factor):
        pair = (m.dataset, m.backbone)
        try:
            x, y, seeds, paired = paired_values(table, pair, m.a, m.b, allow_unpaired)
        except UserError as e:
            notes.append(f"matched budget {m.a} vs {m.b} left out: {e}")
            continue
        c = compare(x, y, paired=paired, test=test, rng=rng, n_boot=n_boot, level=1 - alpha, dataset=m.dataset,
                    backbone=m.backbone, a=m.a, b=m.b, seeds=seeds)
        comps.append(MatchedComparison(m, c))
        units.setdefault((m.family_a, m.family_b), []).append(((x, y, paired), f"{m.dataset}/{m.backbone}"))
    if not comps:
        spans = [pair for pair in table.pairs() if len({family(lab) for lab in table.configurations(pair)
                                                        if (*pair, lab) in table.params}) >= 2]
        if spans:
            notes.append(f"no two families have configurations within {factor:g}x of each other's trainable "
                         f"parameters on {', '.join('/'.join(p) for p in spans)}: nothing compared at matched budgets")
    p_adj = adjust([c.comparison.p for c in comps], correction)
    comps = [replace(c, comparison=replace(c.comparison, p_adj=float(q), verdict=verdict(
        q, best_adjusted(c.comparison.min_p, len(comps), correction), alpha))) for c, q in zip(comps, p_adj)]
    aggs = tuple(aggregate([u for u, _ in v], [n for _, n in v], a, b, rng=rng, n_boot=n_boot, level=1 - alpha,
                           mixed=mixed) for (a, b), v in units.items())
    return BudgetComparisons(factor, tuple(comps), aggs, tuple(notes))


# -- the Pareto front -------------------------------------------------------------------------------------

def pareto_front(params, acc) -> np.ndarray:
    """Boolean mask (n,) of the points not dominated: no other point has at most as many parameters
    and at least the accuracy, with one of the two strictly better. params, acc: (n,)."""
    p, a = np.asarray(params, float), np.asarray(acc, float)
    no_more, no_worse = p[None, :] <= p[:, None], a[None, :] >= a[:, None]     # [i, j]: j vs i
    strictly = (p[None, :] < p[:, None]) | (a[None, :] > a[:, None])
    return ~(no_more & no_worse & strictly).any(axis=1)


@dataclass(frozen=True)
class ParetoPoint:
    """One configuration on one pair: its family, parameters and accuracy over seeds."""
    dataset: str
    backbone: str
    family: str
    label: str
    params: float
    fraction: float | None      # trainable share of full fine-tuning's parameters
    mean: float
    sd: float | None
    n: int
    on_front: bool

    def to_dict(self) -> dict:
        return asdict(self)


def pareto_points(overview: list[dict]) -> dict[tuple[str, str], tuple[ParetoPoint, ...]]:
    """{(dataset, backbone): points} for each pair whose configurations (rows of `report.overview`, with
    "trainable_params") span at least two families; points in ascending parameters, then `groups.order`."""
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for t in overview:
        if t.get("trainable_params") is not None:
            by_pair.setdefault((str(t["dataset"]), str(t["backbone"])), []).append(t)
    out = {}
    for pair, rows in sorted(by_pair.items()):
        if len({family(t["method"]) for t in rows}) < 2:
            continue
        rows = sorted(rows, key=lambda t: (t["trainable_params"], groups.order(t["method"])))
        front = pareto_front([t["trainable_params"] for t in rows], [t["test_acc1"] for t in rows])
        out[pair] = tuple(ParetoPoint(pair[0], pair[1], family(t["method"]), t["method"], float(t["trainable_params"]),
                                      t.get("trainable_fraction"), t["test_acc1"], t["sd"], t["n"], bool(f))
                          for t, f in zip(rows, front))
    return out
