"""Capacity fits on simulated sweeps with known parameters, and `adaptertune analyze capacity`."""

import csv
import json

import numpy as np
import pytest
from scipy import optimize

from adaptertune.analysis import capacity_fit as cap
from adaptertune.analysis.capacity import analyze_runs
from adaptertune.analysis.theory import power_law_elbow
from adaptertune.cli import main
from adaptertune.errors import UserError

from conftest import load_benchmark

DOUBLING = (4, 8, 16, 32, 64)


def sweep(f, rng, ranks=DOUBLING, seeds=3, sigma=0.3):
    """Points (rank, seed, acc), each (n,), from the curve f plus independent run-to-run noise."""
    r = np.repeat(np.asarray(ranks, float), seeds)
    s = np.tile(np.arange(seeds), len(ranks))
    return r, s, f(r) + rng.normal(0, sigma, r.size)


def power(A, B, alpha):
    return lambda r: A - B * r ** -alpha


def powerlaw_tail(gamma, m=256):
    """tau(0..m) of sigma_i^2 = i^-gamma, i = 1..m: (m+1,)."""
    lam = np.arange(1, m + 1, dtype=float) ** -gamma
    return np.append(np.cumsum(lam[::-1])[::-1], 0.0)


# -- fitting and intervals -----------------------------------------------------------------------------

def test_power_law_parameters_are_recovered_inside_their_intervals(rng):
    r, s, y = sweep(power(90.0, 20.0, 1.0), rng, ranks=(1, 2, 4, 8, 16, 32, 64), sigma=0.2)
    fit = cap.fit_sweep(r, s, y, families=("power",), n_boot=300, rng=1)
    p = fit.best.params()
    for name, truth, tol in (("A", 90.0, 0.3), ("B", 20.0, 1.0), ("alpha", 1.0, 0.1)):
        est, lo, hi = p[name]
        assert abs(est - truth) < tol and lo <= truth <= hi and lo < est < hi, (name, p[name])
    assert fit.best.r2 > 0.99 and fit.best.loo_rmse < 0.5


def test_aicc_picks_the_family_that_generated_the_data(rng):
    ranks = (1, 2, 4, 8, 16, 32, 64, 128)
    r, s, y = sweep(power(90.0, 20.0, 0.7), rng, ranks=ranks, sigma=0.1)
    assert cap.fit_sweep(r, s, y, n_boot=50).best.name == "power"
    r, s, y = sweep(lambda r: 88.0 - 15.0 * np.exp(-r / 6.0), rng, ranks=ranks, sigma=0.1)
    fit = cap.fit_sweep(r, s, y, n_boot=50)
    assert fit.best.name == "exp" and fit.best.weight > 0.9
    assert fit.best.params()["rho"][0] == pytest.approx(6.0, rel=0.1)


def test_a_rise_that_stops_at_a_finite_rank_is_fitted_by_the_flat_family(rng):
    """kappa equal directions: accuracy rises linearly in r up to kappa, then stays (a planted rank-kappa shift)."""
    ranks = (1, 2, 4, 8, 16, 32)
    r, s, y = sweep(lambda r: 99.0 - 20.0 * np.maximum(0, 1 - r / 6.0), rng, ranks=ranks, sigma=0.3)
    fit = cap.fit_sweep(r, s, y, n_boot=200)
    assert fit.best.name == "flat" and fit.best.weight > 0.9
    kappa, lo, hi = fit.best.params()["kappa"]
    assert kappa == pytest.approx(6.0, rel=0.05) and lo <= 6.0 <= hi
    # the doubling elbow of the flat family: the gain B(1 - r/kappa) of doubling r in [kappa/2, kappa) is delta
    truth = 6.0 * (1 - 0.5 / 20.0)
    assert fit.elbow_ci[0] <= truth <= fit.elbow_ci[1] and abs(fit.elbow - truth) < 0.5
    # and a smooth saturation is not mistaken for one
    r, s, y = sweep(power(90.0, 20.0, 0.7), rng, ranks=ranks + (64, 128), sigma=0.1)
    assert cap.fit_sweep(r, s, y, n_boot=50).best.name != "flat"


def test_spectral_model_recovers_approximation_and_estimation_terms(rng):
    tail = powerlaw_tail(1.6)
    T = lambda r: cap.normalized_tail(tail, r)  # noqa: E731
    r, s, y = sweep(lambda r: 91.0 - 25.0 * T(r) - 0.02 * r, rng, ranks=(2, 4, 8, 16, 32, 64, 128), sigma=0.15)
    fit = cap.fit_sweep(r, s, y, tail=tail, n_boot=200)
    assert fit.best.name == "spectral"
    p = fit.best.params()
    assert abs(p["a"][0] - 25.0) < 1.5 and abs(p["b"][0] - 0.02) < 0.006 and p["b"][1] > 0   # b detected


def test_constraints_keep_the_saturating_amplitude_non_negative(rng):
    r, s, y = sweep(lambda r: 80.0 + 0.5 * r ** -1.0, rng, sigma=0.01)    # falls with rank
    theta, _ = cap.fit_many(cap.make_family("power", r), r, y[None])
    assert theta[0, 1] == 0.0 and theta[0, 0] == pytest.approx(y.mean())


def test_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time():
    """Repeated simulations of a 5-rank x 3-seed sweep: coverage of A, B, alpha and the elbow."""
    rng = np.random.default_rng(7)
    truth = np.array([90.0, 20.0, 1.0])
    elbow = float(power_law_elbow(20.0, 1.0, 0.5))                        # 20
    r = np.repeat(np.asarray(DOUBLING, float), 3)
    s = np.tile(np.arange(3), len(DOUBLING))
    fam = cap.make_family("power", r)
    reps, hits = 300, np.zeros(4)
    for _ in range(reps):
        y = fam.predict(truth, r) + rng.normal(0, 0.3, r.size)
        b = cap.bootstrap(fam, r, s, y, n_boot=1000, rng=rng)
        lo, hi = b.interval()
        hits[:3] += (lo <= truth) & (truth <= hi)
        e_lo, e_hi = cap._interval(cap.doubling_elbow(fam, b.boot, 0.5, 4.0, 512.0), b.tail)
        hits[3] += e_lo <= elbow <= e_hi
    coverage = hits / reps
    # binomial sd at 95% over 300 runs is 1.3 points (seen: 0.95-0.97); a seed bootstrap with 3 seeds
    # covers ~75%, unscaled residuals ~90%, an interval twice too wide ~100%
    assert np.all((coverage >= 0.91) & (coverage <= 0.99)), coverage


def test_elbow_interval_carries_the_uncertainty_of_choosing_the_family():
    """Exponential truths with a small elbow (AICc often prefers another family): the interval given the
    family chosen once misses the true elbow far more often than the one that re-selects it."""
    rng = np.random.default_rng(11)
    ranks = 2.0 ** np.arange(7)
    r, s = np.repeat(ranks, 3), np.tile(np.arange(3), ranks.size)
    hits = fixed = 0
    for _ in range(24):
        elbow, c = float(np.exp(rng.uniform(np.log(2), np.log(8)))), rng.uniform(1.5, 3.0)
        B = cap.DELTA / (np.exp(-c) - np.exp(-2 * c))                     # the doubling elbow is `elbow`
        acc = 85.0 - B * np.exp(-r * c / elbow) + rng.normal(0, 0.4, r.size)
        fit = cap.fit_sweep(r, s, acc, n_boot=100, rng=rng, families=("power", "exp", "flat"))
        assert set(fit.selection) == {"power", "exp", "flat"} and sum(fit.selection.values()) == pytest.approx(1)
        hits += fit.elbow_ci[0] <= elbow <= fit.elbow_ci[1]
        fixed += fit.elbow_ci_fixed[0] <= elbow <= fit.elbow_ci_fixed[1]
    assert hits >= 21 and hits >= fixed + 2, (hits, fixed)


def test_elbow_interval_covers_the_true_elbow_on_a_handful_of_simulated_sweeps():
    """A small version of benchmarks/elbow_coverage.py: power-law truths, 3 seeds, 12 sweeps in each regime
    (small, inside, beyond the swept ranks). A calibrated 95% interval misses at most 4 of 36 sweeps 96% of
    the time (seen: 1); a 70% one missed 6 of these, one without width all; always [first rank, inf) has no
    finite width."""
    bench = load_benchmark("elbow_coverage")
    rng = np.random.default_rng(3)
    cells = [bench.cell("power", regime, 3, 12, 100, rng) for regime in bench.REGIMES.values()]
    assert sum(c["coverage"] for c in cells) * 12 >= 32 - 1e-9, cells
    assert all(c["low"] + c["high"] == pytest.approx(1 - c["coverage"]) for c in cells)
    assert all(0 < c["width"] < 2 for c in cells), cells        # in doublings: finite, not the whole search range


def test_an_elbow_past_the_swept_ranks_that_the_data_cannot_bound_gets_an_open_interval(rng):
    """A finite-rank truth still rising linearly at the largest rank (kappa = 200 > 64): only the slope is
    seen, so the upper bound is the horizon's (inf, right-censored) and the lower bound does not exceed the truth."""
    truth = 200.0 * (1 - cap.DELTA / 15.0)
    r, s, y = sweep(lambda r: 85.0 - 15.0 * np.maximum(0, 1 - r / 200.0), rng, ranks=2.0 ** np.arange(7), sigma=0.3)
    fit = cap.fit_sweep(r, s, y, n_boot=200, rng=rng, families=("power", "exp", "flat"))
    assert fit.elbow_ci[0] <= truth and fit.elbow_ci[1] == np.inf
    assert fit.to_dict()["elbow_ci"][1] is None


def test_unit_weights_and_the_vectorised_leave_one_rank_out_give_the_plain_fits(rng):
    r, s, y = sweep(power(90.0, 20.0, 1.0), rng, ranks=(1, 2, 4, 8, 16, 32, 64), sigma=0.2)
    fam = cap.make_family("power", r)
    Y = y + rng.normal(0, 0.2, (5, y.size))
    plain, weighted = cap.fit_many(fam, r, Y), cap.fit_many(fam, r, Y, np.ones_like(Y))
    assert np.allclose(plain[0], weighted[0]) and np.allclose(plain[1], weighted[1])
    errors = []
    for rank in np.unique(r):                                   # leave-one-rank-out, one fit at a time
        keep = r != rank
        theta, _ = cap.fit_many(fam, r[keep], y[keep][None])
        errors.append(fam.predict(theta[0], np.array([rank]))[0] - y[~keep].mean())
    assert cap._loo_rmse(fam, r, y) == pytest.approx(float(np.sqrt(np.mean(np.square(errors)))), rel=1e-9)


def test_a_clear_family_is_chosen_in_nearly_every_replicate(rng):
    r, s, y = sweep(power(90.0, 20.0, 1.0), rng, ranks=(1, 2, 4, 8, 16, 32, 64), sigma=0.1)
    fit = cap.fit_sweep(r, s, y, n_boot=200, rng=rng)
    assert fit.best.name == "power" and fit.selection["power"] > 0.9
    assert fit.to_dict()["family_chosen"] == fit.selection


# -- elbow and Kneedle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("B, alpha", [(20.0, 1.0), (40.0, 0.6), (10.0, 1.5)])
def test_doubling_elbow_of_a_power_law_is_the_closed_form(B, alpha):
    fam = cap.make_family("power", np.array(DOUBLING, float))
    found = cap.doubling_elbow(fam, np.array([90.0, B, alpha]), 0.5, 1.0, 4096.0)
    assert found == pytest.approx(float(power_law_elbow(B, alpha, 0.5)), rel=0.01)


def test_doubling_elbow_of_exponential_saturation_matches_root_finding():
    fam = cap.make_family("exp", np.array(DOUBLING, float))
    B, rho = 15.0, 6.0
    root = optimize.brentq(lambda r: B * (np.exp(-r / rho) - np.exp(-2 * r / rho)) - 0.5, rho, 100 * rho)
    assert cap.doubling_elbow(fam, np.array([88.0, B, rho]), 0.5, 4.0, 512.0) == pytest.approx(root, rel=0.01)


def test_doubling_elbow_of_the_flat_family_is_the_closed_form():
    fam = cap.make_family("flat", np.array(DOUBLING, float))
    B, kappa = 20.0, 12.0
    assert cap.doubling_elbow(fam, np.array([95.0, B, kappa]), 0.5, 4.0, 512.0) == pytest.approx(
        kappa * (1 - 0.5 / B), rel=0.01)


def test_elbow_estimated_from_a_noisy_sweep_brackets_the_known_elbow(rng):
    r, s, y = sweep(power(90.0, 20.0, 1.0), rng, ranks=(2, 4, 8, 16, 32, 64, 128), sigma=0.2)
    fit = cap.fit_sweep(r, s, y, families=("power",), n_boot=300)
    assert fit.elbow_ci[0] <= 20.0 <= fit.elbow_ci[1] and abs(fit.elbow - 20.0) < 4
    assert fit.levels[0] < fit.kneedle < fit.levels[-1]


def test_elbow_bounds_at_the_edges_of_the_search():
    fam = cap.make_family("power", np.array(DOUBLING, float))
    assert cap.doubling_elbow(fam, np.array([90.0, 0.0, 1.0]), 0.5, 4.0, 512.0) == 4.0     # flat: first rank
    assert cap.doubling_elbow(fam, np.array([90.0, 500.0, 0.1]), 0.5, 4.0, 512.0) == np.inf  # never saturates


def test_kneedle_finds_the_corner_of_a_known_curve():
    x = np.linspace(0, 6, 61)
    assert cap.kneedle(x, np.minimum(x, 3.0)) == pytest.approx(3.0)
    assert cap.kneedle(x, np.minimum(x, 1.5) + 0.01 * x) == pytest.approx(1.5)
    assert np.isnan(cap.kneedle(x, 2 * x)) and np.isnan(cap.kneedle(x, -x)) and np.isnan(cap.kneedle(x, 0 * x))


# -- statistical tests and awkward inputs ----------------------------------------------------------------

def test_trend_tests_detect_rise_and_diminishing_returns_but_not_in_log_linear_data(rng):
    t = cap.trend_tests(*sweep(power(90.0, 20.0, 1.0), rng))
    assert t.monotone_test == "page" and t.monotone_p < 0.01 and t.diminishing_p < 0.01 and t.decline_p > 0.05
    loglinear = [cap.trend_tests(*sweep(lambda r: 70 + 2 * np.log2(r), rng)) for _ in range(40)]
    assert all(t.monotone_p < 0.01 for t in loglinear)
    assert np.mean([t.diminishing_p < 0.05 for t in loglinear]) < 0.2          # ~5% false alarms


def test_flat_sweep_has_its_elbow_at_the_first_rank_and_says_so(rng):
    fit = cap.fit_sweep(*sweep(lambda r: 80.0 + 0 * r, rng), n_boot=100)
    assert fit.trends.monotone_p > 0.05 and fit.elbow == 4.0 and fit.elbow_ci_fixed == (4.0, 4.0)
    assert fit.elbow_ci[0] == 4.0   # re-selecting the family lets a replicate's finite-rank fit extrapolate a rise
    assert any("no significant increase" in n for n in fit.notes)


def test_lack_of_fit_rejects_a_wrong_curve_and_holds_its_level_for_the_right_one(rng):
    ranks = (1, 2, 4, 8, 16, 32, 64)
    r, s, y = sweep(power(90.0, 20.0, 0.7), rng, ranks=ranks, sigma=0.3)
    fit = cap.fit_sweep(r, s, y, families=("flat",), n_boot=50)           # a smooth rise forced into a step
    assert fit.best.lack_of_fit_p < 1e-3 and any("lack-of-fit" in n for n in fit.notes)
    assert cap.fit_sweep(r, s, y, families=("power",), n_boot=50).best.lack_of_fit_p > 0.01
    # under the right family the test rejects about 5% of sweeps at the 5% level
    fam = cap.make_family("power", r)
    Y = power(90.0, 20.0, 0.7)(r) + rng.normal(0, 0.3, (400, r.size))
    _, rss = cap.fit_many(fam, r, Y)
    p = np.array([cap.lack_of_fit_p(v, r, yy, fam.n_params) for v, yy in zip(rss, Y)])
    assert 0.02 < np.mean(p < 0.05) < 0.09
    assert cap.lack_of_fit_p(1.0, r, np.repeat(y[:1], r.size), 3) is None        # no scatter: no test


def test_elbow_on_the_means_is_the_doubling_rule_without_a_curve():
    levels = np.array([1.0, 2, 4, 8, 16])
    assert cap.means_elbow(levels, np.array([80, 86, 99.6, 99.8, 99.7]), 0.5) == 4.0
    assert cap.means_elbow(levels, np.array([80, 90, 98, 99, 99.6]), 0.5) == np.inf     # the last step gains 0.6
    assert cap.means_elbow(levels, np.array([80, 80.1, 80, 80.2, 80]), 0.5) == 1.0
    rows = np.array([[80, 86, 99.6, 99.8, 99.7], [80, 90, 98, 99, 99.6], [80, 80.1, 80, 80.2, 80]])
    assert list(cap.means_elbow(levels, rows, 0.5)) == [4.0, np.inf, 1.0]             # many at once


def test_interval_of_the_elbow_on_the_means_is_tight_on_a_clean_step_and_covers_a_noisy_curve(rng):
    step = lambda r: np.where(r >= 4, 99.5, 85.0)                          # noqa: E731
    r, s, y = sweep(step, rng, ranks=(1, 2, 4, 8, 16, 32), sigma=0.05)
    assert cap.means_elbow_interval(r, y, 0.5, 500, rng) == (4.0, 4.0)
    f = power(90.0, 20.0, 1.0)                                             # true rule on the means: 32
    truth = cap.means_elbow(np.array(DOUBLING, float), f(np.array(DOUBLING, float)), 0.5)
    hits = [lo <= truth <= hi for lo, hi in
            (cap.means_elbow_interval(*sweep(f, rng, sigma=0.4)[::2], 0.5, 300, rng) for _ in range(60))]
    assert truth == 32 and np.mean(hits) >= 0.85


def test_non_monotone_sweep_is_flagged(rng):
    fit = cap.fit_sweep(*sweep(lambda r: 90 - 20 / r - 0.08 * r, rng, ranks=(4, 8, 16, 32, 64, 128)), n_boot=100)
    assert fit.trends.decline_p < 0.01
    assert any("not monotone" in n for n in fit.notes)


@pytest.mark.parametrize("ranks, seeds, message", [
    ((16,), 3, "at least 3 distinct ranks"), ((4, 8), 3, "at least 3 distinct ranks to fit a curve, got 4, 8"),
    (DOUBLING, 1, "too few for a 3-parameter fit"),
])
def test_too_small_sweeps_give_one_clear_error(rng, ranks, seeds, message):
    with pytest.raises(UserError, match=message):
        cap.fit_sweep(*sweep(power(90, 20, 1), rng, ranks=ranks, seeds=seeds))


def test_single_seed_with_enough_ranks_fits_and_warns(rng):
    fit = cap.fit_sweep(*sweep(power(90, 20, 1), rng, ranks=(1, 2, 4, 8, 16, 32, 64), seeds=1), n_boot=100)
    assert fit.trends.monotone_test == "kendall" and fit.trends.monotone_p < 0.01
    assert any("single seed" in n for n in fit.notes) and np.isnan(fit.ci_lo).all()


def test_bad_points_are_rejected():
    with pytest.raises(UserError, match="one entry per run"):
        cap.fit_sweep([4, 8, 16], [0, 0], [1.0, 2.0, 3.0])
    with pytest.raises(UserError, match="finite"):
        cap.fit_sweep([4, 8, 16], [0, 0, 0], [1.0, np.nan, 3.0])
    with pytest.raises(UserError, match="tail energy"):
        cap.make_family("spectral", np.array([4.0]), np.array([1.0, 2.0]))


# -- spectrum -> sweep ------------------------------------------------------------------------------------

def test_spectrum_predicts_the_sweep_it_generated_and_not_a_mismatched_one(rng):
    tail = powerlaw_tail(2.0)
    T = lambda r: cap.normalized_tail(tail, r)  # noqa: E731
    r, s, y = sweep(lambda r: 90.0 - 30.0 * T(r), rng, sigma=0.1)
    levels = np.unique(r)
    means = np.array([y[r == v].mean() for v in levels])
    se = np.array([y[r == v].std(ddof=1) / np.sqrt(3) for v in levels])
    good = cap.predict_from_spectrum(tail, levels, means, se)
    true_elbow = cap.doubling_elbow(cap.make_family("spectral", levels, tail), np.array([90.0, 30.0, 0.0]),
                                    0.5, 4.0, 512.0)
    assert good.rmse < 3 * good.noise and good.elbow == pytest.approx(true_elbow, rel=0.15)
    flat = np.append(np.arange(256, 0, -1, dtype=float), 0.0)             # equal sigma_i^2: a straight tail
    bad = cap.predict_from_spectrum(flat, levels, means, se)
    assert bad.rmse > 5 * good.rmse


# -- the command --------------------------------------------------------------------------------------------

BB = "vit_small_patch16_224"


def write_sweep(make_run, f, rng, ranks=DOUBLING, seeds=(0, 1, 2), **config):
    for r in ranks:
        for s in seeds:
            make_run(dataset="cifar100", backbone=BB, method="adapter", rank=r, seed=s,
                     summary={"test_acc1": float(f(r) + rng.normal(0, 0.2))}, **config)


def test_command_fits_groups_writes_files_and_names_what_it_skipped(make_run, tmp_path, rng, capsys):
    write_sweep(make_run, power(90.0, 20.0, 1.0), rng)
    write_sweep(make_run, power(85.0, 10.0, 1.0), rng, ranks=(16,), placement="attn")   # one rank only
    make_run(dataset="cifar100", backbone=BB, method="adapter", rank=8, seed=5, summary={})  # no accuracy
    n, d = 200, 32
    frozen = rng.normal(size=(n, d)).astype(np.float32)
    for s in (0, 1):                              # full fine-tuning features: a power-law shift
        u = np.linalg.qr(rng.normal(size=(n, d)))[0]
        shift = (u * np.arange(1, d + 1) ** -1.0) @ np.linalg.qr(rng.normal(size=(d, d)))[0].T
        make_run(dataset="cifar100", backbone=BB, method="full", seed=s, summary={"test_acc1": 91.0},
                 features={"frozen": frozen, "adapted": (frozen + 5 * shift).astype(np.float32)})
    runs = tmp_path / "runs"
    assert main(["analyze", "capacity", str(runs), "--bootstrap", "100", "--delta", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "cifar100/vit_small_patch16_224/adapter " in out and "elbow" in out and "p_dimin" in out
    assert "skipped group cifar100/vit_small_patch16_224/adapter-attn: needs at least 3 distinct ranks" in out
    assert "no numeric test_acc1" in out

    folder = runs / "analysis"
    report = json.loads((folder / "capacity.json").read_text())
    g = report["groups"][0]
    keys = {"dataset", "backbone", "placement", "init", "ranks", "n_seeds", "best_model", "params", "elbow",
            "elbow_ci", "kneedle", "r2", "loo_rmse", "monotone_p", "diminishing_p", "predicted_elbow"}
    assert keys <= set(g) and len(report["groups"]) == 1
    assert (g["dataset"], g["placement"], g["init"], g["ranks"], g["n_seeds"]) == ("cifar100", "block", "zero",
                                                                                    list(DOUBLING), 3)
    assert all(len(v) == 3 and v[1] <= v[0] <= v[2] for v in g["params"].values())
    assert g["elbow_ci"][0] <= g["elbow"] <= g["elbow_ci"][1]
    assert {m["model"] for m in g["models"]} == set(cap.FAMILIES)      # spectral too: spectrum from the full runs
    assert g["predicted_elbow"] is not None and "full fine-tuning, 2 seed(s)" in g["prediction"]["source"]
    reasons = {s.get("group") or s.get("run"): s["reason"] for s in report["skipped"]}
    assert "cifar100/vit_small_patch16_224/adapter-attn" in reasons
    with open(folder / "capacity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cap.FAMILIES) and sum(r["best"] == "True" for r in rows) == 1 and rows[0]["elbow"]
    assert (folder / "capacity.png").stat().st_size > 0 and (folder / "capacity.pdf").exists()

    result = analyze_runs(runs, tmp_path / "again", n_boot=50, plot=False)
    assert result.to_dict()["groups"][0]["best_model"] in cap.FAMILIES
    md = analyze_runs(runs, tmp_path / "md", n_boot=50).markdown()
    assert md.startswith("## Capacity") and "![capacity](capacity.png)" in md and "| group |" in md


def test_command_without_a_fittable_sweep_fails_with_one_line(make_run, tmp_path, rng, capsys):
    write_sweep(make_run, power(90.0, 20.0, 1.0), rng, ranks=(8, 16))
    assert main(["analyze", "capacity", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no adapter rank sweep could be fitted" in err
    assert "needs at least 3 distinct ranks to fit a curve, got 8, 16" in err
