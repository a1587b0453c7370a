"""Pure analyses on arrays and tables (no torch); plotting is confined to plots.py.

Each function takes arrays (or a significance `Table`) and returns a frozen dataclass; none writes a
file (the `analyze_runs` of each module, behind the command line, is what writes):

    spectrum(frozen, adapted)             -> Spectrum        SVD of the feature shift, noise floor (spectrum.py)
    noise_floor(s, rows, cols)            -> NoiseFloor      significant directions of singular values s
    shared_directions(shifts)             -> Shared          directions common to several seeds' shifts
    fit_sweep(ranks, seeds, acc)          -> SweepFit        capacity model, elbow with interval (capacity_fit.py)
    predict_from_spectrum(tail, levels, means) -> SpectrumPrediction
    trend_tests(ranks, seeds, acc)        -> Trends
    compare(x, y, paired=..., rng=...)    -> Comparison      one paired/unpaired comparison (stattests.py)
    aggregate(units, names, a, b, rng=...) -> Aggregate      a vs b across (dataset, backbone) pairs (aggregates.py)
    table_from_rows(rows) / load_table(path) -> Table        the tidy table significance works on (tidy.py)
    significance(table, claims)           -> SignificanceReport   every comparison, aggregate, claim (significance.py)
    match_budgets(params_a, params_b)     -> index pairs     configurations of two families at matched budgets (budgets.py)
    compare_matched(table, rng=...)       -> BudgetComparisons   families compared at matched budgets
    pareto_front(params, acc)             -> bool mask       the configurations no other beats at no more parameters
    evaluate_claim(claim, table)          -> ClaimResult     (claims.py); parse_claims / load_claims read them
    overview(rows)                        -> list of dicts   mean ± sd per configuration (report.py)
    derive()                              -> Theory          the capacity model in sympy (theory.py)

`spectrum` and `significance` are both these functions and their modules (`from adaptertune.analysis
import spectrum` then `spectrum.Spectrum` still works): each module can be called as its
function (`significance(...)` is `significance.analyze`).
"""

from __future__ import annotations

import importlib

from ..aliases import callable_module
from . import significance, spectrum  # noqa: F401  (imported here so that each is its callable module)

callable_module(__name__ + ".spectrum", "adaptertune.analysis.spectrum:spectrum")
callable_module(__name__ + ".significance", "adaptertune.analysis.significance:analyze")

_LAZY = {
    "noise_floor": "spectrum", "shared_directions": "spectrum",
    "fit_sweep": "capacity_fit", "predict_from_spectrum": "capacity_models", "trend_tests": "capacity_trends",
    "compare": "stattests", "aggregate": "aggregates", "table_from_rows": "tidy", "load_table": "tidy", "evaluate_claim": "claims", "parse_claims": "claims", "load_claims": "claims",
    "match_budgets": "budgets", "compare_matched": "budgets", "pareto_front": "budgets",
    "overview": "report", "derive": "theory",
}
__all__ = ["spectrum", "significance", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
