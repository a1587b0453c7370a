"""The single statistical tests and aggregates against scipy, statsmodels and textbook values, and exact
small-n behaviour."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from adaptertune.analysis import significance as sig

# Student's sleep data (Cushny & Peebles), as in R's `sleep`: extra hours of sleep, two drugs, ten patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

ALPHA, TOL, REPS = 0.05, 0.03, 300


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


def test_comparison_verdicts_hold_their_error_rate_under_the_null(rng):
    hits = 0
    for _ in range(REPS):
        c = sig.compare(rng.normal(size=6), rng.normal(size=6), paired=True, rng=rng, n_boot=10)
        hits += sig.verdict(c.p, c.min_p, ALPHA) == "significant"
    assert hits / REPS <= ALPHA + TOL
