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

Families at matched budgets (budgets.py): per pair, each family's configurations (adapter sweeps
and presets, LoRA, VPT, BitFit, head, full) are matched to another family's by trainable parameters
(each the other's nearest in log scale, within `budget_factor`, default 2x) and compared over seeds
with the same tests; these comparisons are corrected as a family of their own and aggregated per
family pair across every match.

Claims (a TOML file) get one verdict each: see analysis/claims.py. Their tests use the
statistics here: "perm" (the default test) is the sign-flip test over paired units (exact up to 16
units, Monte Carlo beyond) or the two-sample permutation test; "t" the t-test, which assumes
normal noise.

The statistics live in stattests.py (one comparison), aggregates.py (across pairs) and tidy.py (the
table); this module is the analysis over a table, its report and the command, and re-exports them.
Imports no torch and no plotting.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import UserError
from . import groups
from .budgets import FACTOR, BudgetComparisons, compare_matched
from .aggregates import (Aggregate, aggregate, hierarchical_bootstrap, iqm, iqm_bootstrap,  # noqa: F401
                         mixed_effects, poi_bootstrap, probability_of_improvement, _iqm_rows)
from .claims import Claim, evaluate_claim, load_claims
from .stattests import (CORRECTIONS, TEST_NAMES, TESTS, UNDERPOWERED, Comparison, adjust,  # noqa: F401
                        best_adjusted, compare, hedges_g, permutation_test_2samp, sign_flip_test, t_pvalue, verdict)
from .tables import latex_escape as _tex
from .tables import count, markdown_table, output_folder, p_value, text_table, write_csv
from .tidy import CSV_COLUMNS, Table, load_table, paired_values, read_csv, table_from_rows  # noqa: F401


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
    budgets: BudgetComparisons | None = None   # families at matched parameter budgets

    def to_dict(self) -> dict:
        return {"metric": self.metric, "alpha": self.alpha, "test": self.test, "correction": self.correction,
                "n_boot": self.n_boot, "seed": self.seed,
                "selection": "adapter (and each sweep's label without the rank) = per pair, the rank with "
                             f"{groups.TIE_RULE} (validation only; test accuracy is never used to select)",
                "selected": list(self.selected), "comparisons": [c.to_dict() for c in self.comparisons],
                "aggregates": [a.to_dict() for a in self.aggregates],
                "claims": [c.to_dict() for c in self.claims], "notes": list(self.notes),
                "figures": list(self.figures), "budgets": self.budgets.to_dict() if self.budgets else None}

    # rows shared by the text, Markdown and LaTeX renderings
    def _comparison_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["pair", "a - b", "n", "diff", f"{1 - self.alpha:.0%} CI (boot)", "p_t", "p_perm", "p_adj",
                "g", "min p", "verdict"]
        rows = [[c.pair, f"{c.a} - {c.b}", f"{c.n}{'' if c.paired else 'u'}", f"{c.mean_diff:+.2f}",
                 _ci(c.ci), p_value(c.p_t), p_value(c.p_perm), p_value(c.p_adj),
                 "-" if c.hedges_g is None else f"{c.hedges_g:+.2f}", p_value(c.min_p), c.verdict]
                for c in self.comparisons]
        return head, rows

    def _budget_rows(self) -> tuple[list[str], list[list[str]]]:
        head = ["pair", "a (params) - b (params)", "a/b", "n", "diff", f"{1 - self.alpha:.0%} CI (boot)", "p_t",
                "p_perm", "p_adj", "g", "verdict"]
        rows = []
        for mc in self.budgets.comparisons:
            c, m = mc.comparison, mc.match
            rows.append([c.pair, f"{m.a} ({count(m.params_a)}) - {m.b} ({count(m.params_b)})", f"{m.ratio:.2f}",
                         f"{c.n}{'' if c.paired else 'u'}", f"{c.mean_diff:+.2f}", _ci(c.ci), p_value(c.p_t),
                         p_value(c.p_perm), p_value(c.p_adj), "-" if c.hedges_g is None else f"{c.hedges_g:+.2f}",
                         c.verdict])
        return head, rows

    def _budget_intro(self) -> str:
        b = self.budgets
        n = len(b.comparisons)
        return (f"{b.rule}; {n} comparison{'s' * (n != 1)}, {self.correction}-corrected among themselves "
                "(apart from the pairwise ones); across pairs, each match is one unit")

    def _aggregate_rows(self, aggregates=None, unit: str = "pairs") -> tuple[list[str], list[list[str]]]:
        aggregates = self.aggregates if aggregates is None else aggregates
        head = ["a - b", unit, "mean diff", "CI (pairs, seeds)", "IQM", "IQM CI", "P(a>b)", "W/T/L", "p sign"]
        mixed = any(g.mixed for g in aggregates)
        rows = []
        for g in aggregates:
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
        if self.budgets and self.budgets.comparisons:
            out += ["", f"families at matched budgets ({self._budget_intro()}):", text_table(*self._budget_rows()), "",
                    "families at matched budgets, across pairs:",
                    text_table(*self._aggregate_rows(self.budgets.aggregates, "matches"))]
        for c in self.claims:
            out += ["", f"[{c.verdict}] {c.id}: {c.text}".rstrip(": "), f"    {c.summary}"]
        notes = self.notes + (self.budgets.notes if self.budgets else ())
        if notes:
            out += [""] + [f"note: {n}" for n in notes]
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
        if self.budgets and self.budgets.comparisons:
            intro = self._budget_intro()
            out += ["### Families at matched budgets", "", intro[0].upper() + intro[1:] + ".", "",
                    markdown_table(*self._budget_rows()), "", "Across pairs:", "",
                    markdown_table(*self._aggregate_rows(self.budgets.aggregates, "matches")), ""]
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


# -- entry points ----------------------------------------------------------------------------------

def _default_labels(table: Table) -> list[str]:
    """The selected adapter of the reference sweep ("adapter"; else of every adapter sweep), the selected
    rank of every other family's sweep (LoRA, VPT) and every baseline; a sweep of adapters alone compares
    its ranks. Other adapter sweeps are compared when named (--methods)."""
    labels = table.labels()
    adapters = [lab for lab in labels if groups.split(lab)[1] is not None]
    selected = {lab for _, _, lab in table.selected}
    mine = [lab for lab in labels if lab.startswith("adapter") and groups.split(lab)[1] is None]
    chosen = (["adapter"] if "adapter" in mine else mine or [a for a in adapters if a.startswith("adapter")])
    chosen += [lab for lab in labels if not lab.startswith("adapter") and (groups.split(lab)[1] is None or
                                                                          groups.split(lab)[0] not in selected)]
    return chosen if len(chosen) >= 2 else adapters


def analyze(table: Table, claims: list[Claim] = (), *, alpha: float = 0.05, test: str = "perm",
            correction: str = "holm", methods: list[str] | None = None, n_boot: int = 2000, seed: int = 0,
            mixed: bool = False, allow_unpaired: bool = False, runs_dir: Path | None = None,
            budget_factor: float = FACTOR) -> SignificanceReport:
    """Compare every pair of `methods` (default: the selected adapter and every baseline) on each
    (dataset, backbone) pair where both were run, correct over all comparisons, aggregate per method
    pair, compare families at matched budgets (within `budget_factor`), and evaluate `claims`."""
    if test not in TESTS:
        raise UserError(f"--test {test!r}: choose one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise UserError(f"--correction {correction!r}: choose one of {', '.join(CORRECTIONS)}")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    if not budget_factor >= 1:
        raise UserError(f"--budget-factor must be at least 1, got {budget_factor}")
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
    budgets = compare_matched(table, factor=budget_factor, alpha=alpha, test=test, correction=correction,
                              n_boot=n_boot, rng=np.random.default_rng([seed, 3]), allow_unpaired=allow_unpaired,
                              mixed=mixed)
    results = [evaluate_claim(c, table, alpha=alpha, test=test, correction=correction, n_boot=n_boot, seed=seed,
                              allow_unpaired=allow_unpaired, runs_dir=runs_dir, index=i)
               for i, c in enumerate(claims)]
    selected = tuple({"dataset": d, "backbone": b, "label": lab, "rank": r, "val_acc1": v}
                     for (d, b, lab), (r, v) in sorted(table.selected.items()))
    return SignificanceReport(table.metric, alpha, test, correction, n_boot, seed, selected, tuple(comps),
                              tuple(aggs), tuple(results), table.notes, budgets=budgets)


def analyze_runs(runs_dir: Path, out_dir: Path, claims=None, *, metric: str = "test_acc1",
                 latex: Path | None = None, plot: bool = True, **options) -> SignificanceReport:
    """Load the table (run folder or CSV), analyze, and write out_dir/significance.json, .csv (the
    pairwise comparisons, then those of families at matched budgets) and significance.png (forest
    plot); with `latex`, also the LaTeX table there and its claims as JSON beside it. `claims`: a TOML
    path or a list of Claim. `options`: alpha, test, correction, methods, n_boot, seed, mixed,
    allow_unpaired, budget_factor (see `analyze`)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    table = load_table(runs_dir, metric)
    if isinstance(claims, (str, Path)):
        claims = load_claims(Path(claims))
    report = analyze(table, claims or (), runs_dir=table.source, **options)
    if plot and report.comparisons:
        from . import plots

        png = plots.save(plots.significance_figure(report), out_dir / "significance.png")
        report = replace(report, figures=(png.name,))
    runs.write_json(out_dir / "significance.json", report.to_dict())
    _write_csv(out_dir / "significance.csv", report.comparisons, report.budgets)
    if latex is not None:
        latex = Path(latex)
        runs.write_text(latex, report.latex())
        runs.write_json(latex.with_suffix(".json"), {k: report.to_dict()[k] for k in
                                                     ("metric", "alpha", "test", "correction", "selection",
                                                      "selected", "claims")})
    return report


_CSV = ("dataset", "backbone", "a", "b", "n", "paired", "mean_a", "mean_b", "mean_diff", "ci_lo", "ci_hi",
        "ci_t_lo", "ci_t_hi", "p_t", "p_perm", "p_wilcoxon", "hedges_g", "test", "p", "min_p", "p_adj", "verdict")


_CSV_BUDGET = ("comparison", "family_a", "family_b", "params_a", "params_b", "ratio")


def _write_csv(path: Path, comps, budgets: BudgetComparisons | None = None) -> None:
    """One row per pairwise comparison ("comparison": "pairwise"), then one per comparison at a matched
    budget ("matched budget", with the families and parameter counts); CRLF line ends, as csv's default
    has always written them."""
    def row(c, extra):
        return {**c.to_dict(), "ci_lo": (c.ci or (None, None))[0], "ci_hi": (c.ci or (None, None))[1],
                "ci_t_lo": (c.ci_t or (None, None))[0], "ci_t_hi": (c.ci_t or (None, None))[1], **extra}
    rows = [row(c, {"comparison": "pairwise"}) for c in comps]
    rows += [row(m.comparison, {**m.match.to_dict(), "comparison": "matched budget"})
             for m in (budgets.comparisons if budgets else ())]
    write_csv(path, _CSV + _CSV_BUDGET, rows, lineterminator="\r\n")


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
    parser.add_argument("--budget-factor", type=float, default=FACTOR,
                        help="families at matched budgets: configurations whose trainable parameters are each "
                             "other's nearest in log scale and within this factor")
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
                          allow_unpaired=args.allow_unpaired, budget_factor=args.budget_factor)
    print(report.table())
    wrote = [out / "significance.json", out / "significance.csv"] + ([latex] if latex else [])
    print("\nwrote " + ", ".join(map(str, wrote)))
    return 0
