"""Multi-seed significance and claims: agreement with scipy/statsmodels, exact small-n behaviour,
error messages, and simulations of the verdicts' error rates."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from adaptertune import cli
from adaptertune.analysis import significance as sig
from adaptertune.analysis.claims import Claim, evaluate_claim, load_claims

DATASETS = ("cifar10", "pets")
BACKBONES = ("deit_tiny_patch16_224", "vit_small_patch16_224")
RANKS = (4, 8, 16)

# Student's sleep data (Cushny & Peebles), as in R's `sleep`: extra hours of sleep, two drugs, ten patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


# -- helpers -----------------------------------------------------------------------------------------

def study(make_run, seeds=(0, 1, 2), gain=10.0, full_gain=6.0, noise=0.3, rng=None, skip=()):
    """A small study: every dataset x backbone, head / full / adapter at RANKS, accuracy rising with rank."""
    rng = rng or np.random.default_rng(0)
    for i, d in enumerate(DATASETS):
        for j, b in enumerate(BACKBONES):
            base = 60.0 + 5 * i + 3 * j
            for s in seeds:
                runs = [("head", None, base), ("full", None, base + full_gain)]
                runs += [("adapter", r, base + gain - 4.0 / math.log2(r)) for r in RANKS]
                for method, rank, acc in runs:
                    if (d, b, method, rank, s) in skip:
                        continue
                    test = acc + rng.normal(0, noise)
                    make_run(dataset=d, backbone=b, method=method, rank=rank or 16, seed=s,
                             summary={"test_acc1": test, "best_val_acc1": acc + rng.normal(0, noise)})


def claims_file(tmp_path, text, name="claims.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(tmp_path, capsys, *extra):
    code = cli.main(["analyze", "significance", str(tmp_path / "runs"), "--no-plot", "--bootstrap", "200",
                     "--latex", str(tmp_path / "paper" / "claims.tex"), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def rows(values, *, val=None):
    """Tidy rows from {(dataset, backbone, method, rank): [metric for seeds 0, 1, ...]}."""
    out = []
    for (d, b, m, r), accs in values.items():
        for s, acc in enumerate(accs):
            out.append({"dataset": d, "backbone": b, "method": m, "rank": r, "seed": s, "test_acc1": acc,
                        "best_val_acc1": (val or {}).get((d, b, m, r), acc)})
    return out


def claim(**kw):
    return Claim(**{"id": "c", **kw})


# -- single tests against scipy, statsmodels and textbook values ---------------------------------------

@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_test_equals_scipys_exact_paired_permutation_test(rng, alternative):
    d = rng.normal(0.4, 1.0, size=7)
    ref = stats.permutation_test((d,), lambda x: np.mean(x), permutation_type="samples",
                                 n_resamples=np.inf, alternative=alternative)
    p, _ = sig.sign_flip_test(d, alternative)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_exact_permutation_p_at_three_seeds_is_a_quarter_at_best():
    p, min_p = sig.sign_flip_test([1.0, 2.0, 3.0])           # all three seeds agree: the most extreme data
    assert (p, min_p) == (0.25, 0.25)
    p, min_p = sig.sign_flip_test([10.0, 20.0, 30.0], "greater")
    assert (p, min_p) == (0.125, 0.125)
    assert sig.sign_flip_test([1.0, -2.0, 3.0])[0] > 0.25
    assert sig.sign_flip_test(np.ones(6))[1] == pytest.approx(1 / 32)


@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
def test_two_sample_permutation_test_equals_scipys_exact_test(rng, alternative):
    x, y = rng.normal(1, 1, 4), rng.normal(0, 1, 5)
    ref = stats.permutation_test((x, y), lambda a, b: np.mean(a) - np.mean(b), permutation_type="independent",
                                 n_resamples=np.inf, alternative=alternative)
    assert sig.permutation_test_2samp(x, y, alternative)[0] == pytest.approx(ref.pvalue, rel=1e-9)


def test_paired_comparison_reproduces_the_textbook_sleep_example(rng):
    c = sig.compare(SLEEP_1, SLEEP_2, paired=True, rng=rng)
    # R: t.test(extra ~ group, data = sleep, paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833
    assert c.mean_diff == pytest.approx(-1.58)
    assert c.p_t == pytest.approx(0.002833, abs=5e-7)
    assert c.ci_t == pytest.approx((-2.4598858, -0.7001142), abs=1e-6)
    assert c.p_wilcoxon == pytest.approx(stats.wilcoxon(np.subtract(SLEEP_1, SLEEP_2)).pvalue)
    assert c.p_perm == pytest.approx(stats.permutation_test(
        (np.subtract(SLEEP_1, SLEEP_2),), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue)
    assert c.ci[0] < c.mean_diff < c.ci[1] and c.ci[1] < 0   # bootstrap interval around a clear effect


def test_unpaired_comparison_is_welch_as_in_the_textbook(rng):
    c = sig.compare(SLEEP_1, SLEEP_2, paired=False, rng=rng)
    # R: t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p-value = 0.07939
    assert c.p_t == pytest.approx(0.07939, abs=5e-6)
    assert c.ci_t == pytest.approx((-3.3654832, 0.2054832), abs=1e-6)
    assert c.p_wilcoxon == pytest.approx(stats.mannwhitneyu(SLEEP_1, SLEEP_2).pvalue)


def test_hedges_g_is_the_bias_corrected_standardized_mean_difference():
    x, y = np.array([5.0, 6.0, 8.0, 9.0]), np.array([4.0, 4.5, 6.0, 5.5])
    sp = math.sqrt((3 * x.var(ddof=1) + 3 * y.var(ddof=1)) / 6)
    d = (x.mean() - y.mean()) / sp
    assert sig.hedges_g(x, y) == pytest.approx(d * (1 - 3 / (4 * 6 - 1)), rel=2e-3)  # Hedges' approximation
    assert sig.hedges_g(x, y) < d
    assert sig.hedges_g([1.0], [2.0]) is None


@pytest.mark.parametrize("method", ["holm", "fdr_bh"])
def test_adjusted_p_values_equal_statsmodels(method):
    p = [0.01, 0.04, 0.03, 0.2, 0.002]
    expected = multipletests(p, method=method)[1]
    assert np.allclose(sig.adjust(p, method), expected)
    hand = {"holm": [0.04, 0.09, 0.09, 0.2, 0.01], "fdr_bh": [0.025, 0.05, 0.05, 0.2, 0.01]}[method]
    assert np.allclose(expected, hand)


def test_iqm_equals_trimmed_mean_and_bootstraps_stay_inside_the_data(rng):
    x = rng.normal(size=13)
    assert sig.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))
    v = np.array([[1.0, 2, 3, 4, 100, np.nan], [5, 1, 2, 3, 4, 6]])
    assert np.allclose(sig._iqm_rows(v), [stats.trim_mean(v[0, :5], 0.25), stats.trim_mean(v[1], 0.25)])
    d = [rng.normal(2, 1, 3) for _ in range(5)]
    boot = sig.iqm_bootstrap(d, rng=rng, n_boot=300)
    allv = np.concatenate(d)
    assert allv.min() <= boot.min() and boot.max() <= allv.max()


def test_hierarchical_bootstrap_resamples_pairs_then_seeds(rng):
    same = [(np.array([3.0, 3.0, 3.0]), np.zeros(3), True)] * 4
    assert np.allclose(sig.hierarchical_bootstrap(same, rng=rng, n_boot=200), 3.0)
    spread = [(np.full(3, v), np.zeros(3), True) for v in (1.0, 2.0, 8.0, 9.0)]  # no seed noise, pairs differ
    assert np.ptp(sig.hierarchical_bootstrap(spread, rng=rng, n_boot=500)) > 3       # pair level
    assert np.allclose(sig.hierarchical_bootstrap(spread, rng=rng, n_boot=200, resample_pairs=False), 5.0)
    noisy = [(np.array([0.0, 2.0, 4.0]), np.zeros(3), True)] * 3                     # seed level only
    boot = sig.hierarchical_bootstrap(noisy, rng=rng, n_boot=500, resample_pairs=False)
    assert boot.min() < 2 < boot.max()
    unpaired = [(np.array([5.0, 5.0]), np.array([1.0, 1.0, 1.0]), False)]
    assert np.allclose(sig.hierarchical_bootstrap(unpaired, rng=rng, n_boot=50), 4.0)


def test_aggregates_probability_of_improvement_sign_test_and_mixed_model(rng):
    assert sig.probability_of_improvement([([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], True)]) == pytest.approx(0.5)
    units = [(np.array([v + 1.0, v + 2.0, v + 1.5]), np.array([v, v + 0.2, v - 0.1]), True)
             for v in (50.0, 60.0, 70.0, 80.0, 90.0)]
    units.append((np.array([40.0, 40.1, 39.9]), np.array([41.0, 41.0, 41.0]), True))   # one loss
    agg = sig.aggregate(units, [f"p{i}" for i in range(6)], "a", "b", rng=rng, n_boot=300, mixed=True)
    assert (agg.wins, agg.ties, agg.losses) == (5, 0, 1)
    assert agg.p_sign == pytest.approx(stats.binomtest(5, 6, 0.5).pvalue)
    diffs = [np.mean(x) - np.mean(y) for x, y, _ in units]
    assert agg.mean_diff == pytest.approx(np.mean(diffs))
    assert agg.ci[0] < agg.mean_diff < agg.ci[1]
    # balanced design: MixedLM's fixed effect is the difference of the grand means
    assert agg.mixed["coef"] == pytest.approx(np.mean(diffs), abs=1e-6)


# -- the table: selection on validation, CSV, errors ------------------------------------------------------

def test_adapter_rank_is_selected_on_validation_never_on_test():
    vals = {("c", "b", "adapter", 4): [70.0, 71.0, 70.5], ("c", "b", "adapter", 8): [80.0, 81.0, 79.0],
            ("c", "b", "head", None): [60.0, 61.0, 60.5]}
    val = {("c", "b", "adapter", 4): 90.0, ("c", "b", "adapter", 8): 85.0}   # r4 is best on validation
    table = sig.table_from_rows(rows(vals, val=val))
    assert table.selected[("c", "b", "adapter")] == (4, 90.0)
    assert table.values(("c", "b"), "adapter") == {0: 70.0, 1: 71.0, 2: 70.5}


def test_csv_table_gives_the_same_report_as_run_directories(make_run, tmp_path):
    study(make_run)
    found = sig.load_table(tmp_path / "runs")
    cols = ["dataset", "backbone", "method", "rank", "seed", "test_acc1", "best_val_acc1", "placement"]
    lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]) for c in cols)
                                for r in sig.runs.discover(tmp_path / "runs").rows()]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    a = sig.analyze_runs(tmp_path / "runs", tmp_path / "a", n_boot=100, plot=False).to_dict()
    b = sig.analyze_runs(tmp_path / "table.csv", tmp_path / "b", n_boot=100, plot=False).to_dict()
    assert a["comparisons"] == b["comparisons"] and a["selected"] == b["selected"]


def test_unreadable_csv_values_and_missing_columns_are_one_line_errors(tmp_path):
    (tmp_path / "t.csv").write_text("dataset,backbone,method,seed,test_acc1\nc,b,head,0,50\n")
    with pytest.raises(sig.UserError, match="missing column.*rank"):
        sig.load_table(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("dataset,backbone,method,rank,seed,test_acc1\nc,b,head,,zero,50\n")
    with pytest.raises(sig.UserError, match="line 2: seed 'zero' is not a number"):
        sig.load_table(tmp_path / "t.csv")


# -- the command ------------------------------------------------------------------------------------------

PAPER_LIKE = """
alpha = 0.05
[[claim]]
id = "beats-head"
text = "Adapters beat the linear probe everywhere."
kind = "better_all"
a = "adapter"
b = "head"
test = "t"

[[claim]]
id = "gain"
kind = "mean_diff"
a = "adapter"
b = "head"
at_least = 5.0
test = "t"
datasets = ["cifar10", "pets"]
backbones = ["deit_tiny", "vit_small"]

[[claim]]
id = "vs-full"
kind = "wins"
a = "adapter"
b = "full"
k = 4
m = 4
test = "t"

[[claim]]
id = "rank"
kind = "monotone"
diminishing = true
"""


def test_command_prints_a_verdict_per_claim_and_writes_json_csv_and_latex(make_run, tmp_path, capsys):
    study(make_run)
    code, out, err = run_cli(tmp_path, capsys, "--claims", str(claims_file(tmp_path, PAPER_LIKE)))
    assert code == 0, err
    assert "[supported] beats-head" in out and "[supported] gain" in out and "[supported] rank" in out
    assert "[supported] vs-full" in out          # adapter is 3 points above full, noise 0.3, t-test
    assert "adapter = per pair, the rank with the highest mean validation accuracy over seeds; on a tie, the smaller rank" in out
    report = json.loads((tmp_path / "runs" / "analysis" / "significance.json").read_text())
    keys = {"dataset", "backbone", "a", "b", "n", "mean_diff", "ci", "p_t", "p_perm", "p_adj", "hedges_g",
            "min_p", "verdict"}
    assert keys <= set(report["comparisons"][0])
    assert len(report["comparisons"]) == 4 * 3                 # 4 pairs x (adapter-full, adapter-head, full-head)
    assert [c["id"] for c in report["claims"]] == ["beats-head", "gain", "vs-full", "rank"]
    assert all({"id", "kind", "verdict", "summary"} <= set(c) for c in report["claims"])
    gain = next(c for c in report["claims"] if c["id"] == "gain")
    assert gain["mean_diff"] == pytest.approx(10 - 4 / 4, abs=0.5) and f"{gain['mean_diff']:+.2f}" in gain["summary"]
    csv_text = (tmp_path / "runs" / "analysis" / "significance.csv").read_text().splitlines()
    assert csv_text[0].startswith("dataset,backbone,a,b,n") and len(csv_text) == 13
    tex = (tmp_path / "paper" / "claims.tex").read_text()
    assert r"\begin{tabular}" in tex and "beats-head" in tex and "supported" in tex and r"\_" not in tex.split("\n")[1]
    beside = json.loads((tmp_path / "paper" / "claims.json").read_text())
    assert [c["verdict"] for c in beside["claims"]] == [c["verdict"] for c in report["claims"]]


def test_three_seeds_make_per_pair_claims_inconclusive_under_the_exact_test(make_run, tmp_path, capsys):
    study(make_run, gain=30.0)
    path = claims_file(tmp_path, '[[claim]]\nid = "x"\nkind = "better_all"\na = "adapter"\nb = "head"\n')
    code, out, _ = run_cli(tmp_path, capsys, "--claims", str(path))
    assert code == 0
    assert "[inconclusive (underpowered)] x" in out and "cannot go below p = 0.125" in out
    assert "inconclusive (underpowered)" in out.split("across pairs")[0]   # the pairwise table too


def test_without_claims_every_method_pair_is_compared_with_the_chosen_correction(make_run, tmp_path, capsys):
    study(make_run, seeds=range(6))
    code, out, _ = run_cli(tmp_path, capsys, "--correction", "fdr_bh")
    assert code == 0 and "across pairs" in out and "fdr_bh correction over 12 comparisons" in out
    report = json.loads((tmp_path / "runs" / "analysis" / "significance.json").read_text())
    raw = [c["p"] for c in report["comparisons"]]
    assert np.allclose([c["p_adj"] for c in report["comparisons"]], multipletests(raw, method="fdr_bh")[1])
    assert {(a["a"], a["b"]) for a in report["aggregates"]} == {("adapter", "full"), ("adapter", "head"),
                                                                  ("full", "head")}
    assert "adapter - head" in (tmp_path / "paper" / "claims.tex").read_text()


def test_forest_plot_is_written(make_run, tmp_path, capsys):
    study(make_run)
    assert cli.main(["analyze", "significance", str(tmp_path / "runs"), "--bootstrap", "50",
                     "--methods", "adapter,head"]) == 0
    assert (tmp_path / "runs" / "analysis" / "significance.png").stat().st_size > 1000


X = '[[claim]]\nid = "x"\n'
AB = 'a = "adapter"\nb = "head"\n'


@pytest.mark.parametrize("text, message", [
    (X + 'kind = "better_all"\na = "adapter"\nb = \n', "not valid TOML"),
    (X + 'kind = "better_al"\n' + AB, "claim 'x': field 'kind' 'better_al'"),
    (X + 'kind = "better_all"\na = "adapter"\n', "claim 'x': kind 'better_all' needs field 'b'"),
    (X + 'kind = "wins"\nk = "ten"\n' + AB, "claim 'x': field 'k' must be an integer"),
    (X + 'kind = "better_all"\nk = 3\n' + AB, "claim 'x': field 'k' does not apply"),
    ('[[claim]]\nkind = "better_all"\n' + AB, "claim #1: missing field 'id'"),
    (X + 'kind = "better_all"\nalpha = 5\n' + AB, "claim 'x': field 'alpha' must be in"),
    (X + 'kind = "better_all"\na = "adapter"\nb = "fulll"\n', "claim 'x': method 'fulll' not in the data"),
    (X + 'kind = "better_all"\ndatasets = ["svhn"]\n' + AB, "claim 'x': dataset 'svhn' not in the data"),
    (X + 'kind = "wins"\nk = 3\nm = 15\n' + AB, "claim 'x': field 'm' is 15 but 4 pairs"),
    (X + 'kind = "monotone"\nranks = [4, 8, 32]\n', "claim 'x': method 'adapter-r32' not in the data"),
    ('clams = 1\n', "unknown top-level key"),
])
def test_bad_claims_are_one_line_errors_naming_the_claim_and_field(make_run, tmp_path, capsys, text, message):
    study(make_run, seeds=(0, 1))
    code, out, err = run_cli(tmp_path, capsys, "--claims", str(claims_file(tmp_path, text)))
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_seeds_are_a_one_line_error_unless_unpaired_is_allowed(make_run, tmp_path, capsys):
    study(make_run, skip={("pets", "vit_small_patch16_224", "head", None, 2)})
    code, _, err = run_cli(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "pets/vit_small_patch16_224: missing seeds for a paired test (head lacks seed(s) 2)" in err
    code, out, _ = run_cli(tmp_path, capsys, "--allow-unpaired")
    assert code == 0
    report = json.loads((tmp_path / "runs" / "analysis" / "significance.json").read_text())
    unpaired = [c for c in report["comparisons"] if not c["paired"]]
    assert len(unpaired) == 2 and all(c["b"] == "head" for c in unpaired)


# -- simulations: error rates of the verdicts ---------------------------------------------------------------

def _simulate(kind_claim, make_rows, reps, seed=0, **kw):
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(reps):
        table = sig.table_from_rows(make_rows(rng))
        verdicts.append(evaluate_claim(kind_claim, table, n_boot=20, **kw).verdict)
    return verdicts


def _pairs_rows(rng, m, n, effect, sd_pair=3.0, noise=1.0, x0=0.0):
    """m pairs x n seeds of methods a and b with a - b = x0 + effect + pair- and seed-level noise."""
    out = {}
    for i in range(m):
        base = 70 + rng.normal(0, 5)
        pair_shift = x0 + effect + rng.normal(0, sd_pair)
        b = base + rng.normal(0, noise, n)
        out[(f"d{i}", "vit", "head", None)] = b
        out[(f"d{i}", "vit", "full", None)] = b + pair_shift + rng.normal(0, noise, n)
    return rows(out)


ALPHA, TOL, REPS = 0.05, 0.03, 300


@pytest.mark.parametrize("name, c, kw, make", [
    ("better_all (t)", claim(kind="better_all", a="full", b="head", test="t"), {},
     lambda r: _pairs_rows(r, 1, 3, 0.0, sd_pair=0.0)),
    ("mean_diff (perm)", claim(kind="mean_diff", a="full", b="head", at_least=2.0), {},
     lambda r: _pairs_rows(r, 6, 3, 0.0, x0=2.0)),
    ("mean_diff (t, interval)", claim(kind="mean_diff", a="full", b="head", at_least=-1.0, at_most=1.0, test="t"), {},
     lambda r: _pairs_rows(r, 5, 3, 0.0, x0=1.0, sd_pair=0.5)),
    ("wins (t, holm)", claim(kind="wins", a="full", b="head", k=1, test="t"), {},
     lambda r: _pairs_rows(r, 4, 3, 0.0, sd_pair=0.0)),
])
def test_false_positive_rate_under_a_true_null_stays_at_alpha(name, c, kw, make, monkeypatch):
    monkeypatch.setattr("gc.collect", lambda *a: 0)  # statsmodels' Holm calls gc.collect(): 0.1 s a call here
    verdicts = _simulate(c, make, REPS, **kw)
    rate = np.mean([v == "supported" for v in verdicts])
    assert rate <= ALPHA + TOL, (name, rate)
    assert not any(v.startswith("inconclusive") for v in verdicts)


def _rank_rows(rng, m, n, slope, curvature=0.0):
    """m pairs x n seeds at ranks 4..32: accuracy = slope * log2 r - curvature * (log2 r)^2 + noise."""
    out = {}
    for i in range(m):
        base = 70 + rng.normal(0, 5)
        for r in (4, 8, 16, 32):
            x = math.log2(r)
            out[(f"d{i}", "vit", "adapter", r)] = base + slope * x - curvature * x * x + rng.normal(0, 1.0, n)
    return rows(out)


def test_monotone_claim_holds_its_error_rate_and_finds_a_real_trend():
    trend = claim(kind="monotone")
    null = _simulate(trend, lambda r: _rank_rows(r, 2, 3, 0.0), REPS)
    assert np.mean([v == "supported" for v in null]) <= ALPHA + TOL
    concave = claim(kind="monotone", diminishing=True)
    linear = _simulate(concave, lambda r: _rank_rows(r, 4, 3, 2.0), 200, seed=1)  # rising, but not diminishing
    assert np.mean([v == "supported" for v in linear]) <= ALPHA + TOL
    strong = _simulate(concave, lambda r: _rank_rows(r, 4, 3, 12.0, curvature=1.5), 20, seed=2)
    assert strong.count("supported") == 20


def test_comparison_verdicts_hold_their_error_rate_under_the_null(rng):
    hits = 0
    for _ in range(REPS):
        c = sig.compare(rng.normal(size=6), rng.normal(size=6), paired=True, rng=rng, n_boot=10)
        hits += sig.verdict(c.p, c.min_p, ALPHA) == "significant"
    assert hits / REPS <= ALPHA + TOL


@pytest.mark.parametrize("c, make", [
    (claim(kind="better_all", a="full", b="head"), lambda r: _pairs_rows(r, 5, 6, 8.0, sd_pair=1.0)),
    (claim(kind="mean_diff", a="full", b="head", at_least=2.0), lambda r: _pairs_rows(r, 8, 3, 12.0)),
    (claim(kind="wins", a="full", b="head", k=4, m=5, test="t"), lambda r: _pairs_rows(r, 5, 3, 8.0, sd_pair=1.0)),
])
def test_a_large_true_effect_is_supported(c, make, monkeypatch):
    monkeypatch.setattr("gc.collect", lambda *a: 0)
    assert _simulate(c, make, 20, seed=3) == ["supported"] * 20


def test_claim_scope_restricts_to_named_pairs_and_resolves_backbone_shorthand():
    vals = {("cifar10", "vit_small_patch16_224", "full", None): [80.0, 81.0, 82.0],
            ("cifar10", "vit_small_patch16_224", "head", None): [70.0, 70.5, 71.0],
            ("svhn", "vit_small_patch16_224", "full", None): [60.0, 61.0, 62.0],
            ("svhn", "vit_small_patch16_224", "head", None): [70.0, 70.5, 71.0]}
    table = sig.table_from_rows(rows(vals))
    c = claim(kind="better_all", a="full", b="head", test="t", datasets=("cifar10",), backbones=("vit_small",))
    r = evaluate_claim(c, table)
    assert r.verdict == "supported" and [p["dataset"] for p in r.details["pairs"]] == ["cifar10"]
    assert evaluate_claim(replace(c, datasets=None), table).verdict == "not supported"


def test_shipped_paper_claims_parse_and_name_the_core_suite():
    claims = load_claims(Path(__file__).parents[1] / "analysis" / "paper_claims.toml")
    by_id = {c.id: c for c in claims}
    assert {c.kind for c in claims} >= {"better_all", "mean_diff", "wins", "monotone"}
    gain = next(c for c in claims if c.kind == "mean_diff")
    assert gain.at_least < 14.9 < gain.at_most and len(gain.datasets) * len(gain.backbones) == 15
    wins = next(c for c in claims if c.kind == "wins")
    assert (wins.k, wins.m, wins.a, wins.b) == (10, 15, "adapter", "full")
    assert all(c.alpha == 0.05 and c.correction == "holm" for c in by_id.values())


def test_elbow_claim_reads_the_capacity_reports_intervals(make_run, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from adaptertune.analysis import capacity

    study(make_run, seeds=(0, 1))
    groups = [{"dataset": d, "backbone": b, "sweep": "adapter", "elbow": 8.0, "elbow_ci": [6.0, 12.0]} for d in DATASETS for b in BACKBONES]
    calls = []

    def fake(runs_dir, out_dir, **options):
        calls.append(runs_dir)
        return SimpleNamespace(to_dict=lambda: {"groups": groups})

    monkeypatch.setattr(capacity, "analyze_runs", fake, raising=False)
    table = sig.load_table(tmp_path / "runs")
    kw = dict(runs_dir=tmp_path / "runs", out_dir=tmp_path / "out")
    assert evaluate_claim(claim(kind="elbow", at_most=16.0), table, **kw).verdict == "supported"
    assert calls == [tmp_path / "runs"]
    below = evaluate_claim(claim(kind="elbow", at_most=10.0), table, **kw)
    assert below.verdict == "not supported" and "at or below rank 10 on 0/4 pairs" in below.summary
    groups[0]["elbow_ci"] = [6.0, None]                          # beyond the search horizon: unbounded
    unbounded = evaluate_claim(claim(kind="elbow", at_most=16.0), table, **kw)
    assert unbounded.verdict == "not supported" and "3/4" in unbounded.summary
    del groups[0]
    assert evaluate_claim(claim(kind="elbow", at_most=16.0), table, **kw).verdict == "inconclusive"
    with pytest.raises(sig.UserError, match="elbow claims need run directories"):
        evaluate_claim(claim(kind="elbow", at_most=16.0), table)


def test_ablation_runs_get_their_own_labels_and_their_own_rank_selection():
    base = {"dataset": "c", "backbone": "b", "method": "adapter", "seed": 0, "test_acc1": 70.0}
    table = sig.table_from_rows([
        {**base, "rank": 16, "best_val_acc1": 70.0},
        {**base, "rank": 16, "placement": "attn", "best_val_acc1": 99.0, "test_acc1": 90.0},
        {**base, "rank": 8, "init": "small", "blocks": "every:2", "best_val_acc1": 99.0},
    ])
    assert table.labels() == ["adapter", "adapter-attn", "adapter-every2-small", "adapter-r16", "adapter-r16-attn",
                              "adapter-r8-every2-small"]
    assert table.selected == {("c", "b", "adapter"): (16, 70.0), ("c", "b", "adapter-attn"): (16, 99.0),
                              ("c", "b", "adapter-every2-small"): (8, 99.0)}
    assert table.values(("c", "b"), "adapter-attn") == {0: 90.0}
    with pytest.raises(sig.UserError, match="two runs for c/b/head seed 0"):
        sig.table_from_rows([{**base, "method": "head", "rank": None}] * 2)


def test_elbow_claim_against_the_real_capacity_fit(make_run, tmp_path):
    rng = np.random.default_rng(0)
    for r in (2, 4, 8, 16, 32, 64):
        for s in range(3):  # gain per doubling 4 / r points: below the 0.5-point threshold from r = 8 on
            make_run(dataset="cifar10", backbone="vit_small_patch16_224", method="adapter", rank=r, seed=s,
                     summary={"test_acc1": 90 - 8 / r + rng.normal(0, 0.05), "best_val_acc1": 90.0})
    table = sig.load_table(tmp_path / "runs")
    kw = dict(runs_dir=tmp_path / "runs", out_dir=tmp_path / "out")
    low = evaluate_claim(claim(kind="elbow", at_most=32.0), table, **kw)
    assert low.verdict == "supported", low.summary
    assert 4 <= low.details["pairs"][0]["elbow"] <= 16
    assert evaluate_claim(claim(kind="elbow", at_most=2.0), table, **kw).verdict == "not supported"
    assert not (tmp_path / "out").exists()  # the capacity fit's files are not written as a side effect
