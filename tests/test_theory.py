"""The sympy derivation of the capacity model against independent numerics (numpy/scipy only)."""

import itertools
import math

import numpy as np
import pytest
import sympy as sp
from scipy import optimize, special

from adaptertune.analysis import theory


def risk_by_hand(r, e_inf, a, b, n, d, L, gamma):
    """The continuum model written out directly: e + a r^(1-g)/((g-1) zeta(g)) + b L (r(2d+1)+d)/n."""
    return e_inf + a * r ** (1 - gamma) / ((gamma - 1) * special.zeta(gamma)) + b * L * (r * (2 * d + 1) + d) / n


def exact_risk_by_hand(r, e_inf, a, b, n, d, L, gamma):
    """With the exact tail sum_{i>r} i^-g = zeta(g, r+1) (Hurwitz)."""
    return e_inf + a * special.zeta(gamma, r + 1) / special.zeta(gamma) + b * L * (r * (2 * d + 1) + d) / n


GRID = list(itertools.product([1.3, 2.0, 3.0],        # gamma
                              [5.0, 30.0],            # a (points)
                              [0.5, 5.0],             # b
                              [1e3, 5e4],             # n
                              [192, 768],             # d
                              [1, 12]))               # L


def test_param_count_is_the_contract():
    assert theory.param_count(4, 384, 12) == 12 * (4 * 769 + 384)
    assert theory.param_count(1, 3) == 2 * 3 + 1 + 3          # down 3x1 + bias 1, up 1x3 + bias 3
    r, d, L = theory.r, theory.d, theory.L
    assert sp.simplify(theory.derive().params - L * (r * (2 * d + 1) + d)) == 0


def test_lambdified_risks_are_the_models_written_by_hand():
    nm = theory.numeric()
    r = np.array([1.0, 3.0, 17.0, 200.0])
    for gamma, a, b, n, d, L in GRID[::7]:
        args = (0.7, a, b, n, d, L, gamma)
        np.testing.assert_allclose(nm.risk(r, *args), risk_by_hand(r, *args), rtol=1e-12)
        np.testing.assert_allclose(nm.risk_exact(r, *args), exact_risk_by_hand(r, *args), rtol=1e-12)


def test_closed_form_optimal_rank_agrees_with_numeric_minimisation():
    checked = 0
    for gamma, a, b, n, d, L in GRID:
        r_star = float(theory.optimal_rank(a, b, n, d, gamma, blocks=L))
        res = optimize.minimize_scalar(lambda u: risk_by_hand(math.exp(u), 0.0, a, b, n, d, L, gamma),
                                       bounds=(math.log(1e-6), math.log(1e7)), method="bounded",
                                       options={"xatol": 1e-10})
        assert math.exp(res.x) == pytest.approx(r_star, rel=1e-4), (gamma, a, b, n, d, L)
        checked += 1
    assert checked == len(GRID) == 96


def test_exact_discrete_optimum_is_the_floor_of_the_closed_form():
    checked = 0
    for gamma, a, b, n, d, L in GRID:
        r_star = float(theory.optimal_rank(a, b, n, d, gamma, blocks=L))
        if r_star > 5000 or abs(r_star - round(r_star)) < 1e-6:
            continue                                          # too far out, or a tie between two ranks
        ranks = np.arange(0, int(r_star) + 50)
        best = int(np.argmin(exact_risk_by_hand(ranks.astype(float), 0.0, a, b, n, d, L, gamma)))
        assert best == math.floor(r_star), (gamma, a, b, n, d, L, r_star)
        checked += 1
    assert checked > 40


def test_continuum_tail_brackets_the_exact_tail():
    nm_tail = sp.lambdify((theory.r, theory.alpha), theory.derive().tail.subs(theory.s, 1))
    for gamma in (1.2, 2.0, 3.5):
        r = np.arange(1, 200, dtype=float)
        exact = special.zeta(gamma, r + 1)                    # sum_{i > r} i^-gamma
        assert np.all(nm_tail(r + 1, gamma - 1) <= exact) and np.all(exact <= nm_tail(r, gamma - 1))


def test_diminishing_returns_per_doubling_iff_gamma_above_one():
    t = theory.derive()
    g = theory.gamma
    assert [bool(t.diminishing.subs(g, v)) for v in (0.5, 1, 1.0001, 4)] == [False, False, True, True]
    assert t.diminishing.free_symbols == {g}
    gain = theory.numeric().doubling_gain
    r = np.arange(1, 60, dtype=float)
    for gamma, diminishing in ((1.5, True), (3.0, True), (0.6, False), (0.9, False)):
        direct = np.array([np.sum(np.arange(k + 1, 2 * k + 1, dtype=float) ** -gamma) for k in range(1, 400)])
        assert np.all(np.diff(direct[20:]) < 0) == diminishing                  # the spectrum itself
        assert np.all(np.diff(gain(r, gamma)) < 0) == diminishing              # the derived G(r)
    # per added rank risk is convex whatever alpha > 0: the derived curvature is positive
    curv = sp.lambdify((theory.r, theory.a, theory.alpha), t.curvature)
    assert np.all(curv(np.geomspace(0.5, 1e3, 50), 3.0, 0.4) > 0)


def test_power_law_elbow_matches_root_finding():
    for B, alpha, delta in itertools.product([5.0, 20.0, 80.0], [0.3, 1.0, 2.0], [0.25, 0.5, 1.0]):
        gain = lambda r: B * r ** -alpha * (1 - 2 ** -alpha) - delta  # noqa: E731
        root = optimize.brentq(gain, 1e-9, 1e9, xtol=1e-12, rtol=1e-12)
        assert float(theory.power_law_elbow(B, alpha, delta)) == pytest.approx(root, rel=1e-9)
    # B of a power-law spectrum: a / ((gamma - 1) zeta(gamma))
    assert theory.numeric().amplitude(3.0, 2.0) == pytest.approx(3.0 / special.zeta(2.0))


def test_latex_export_writes_the_derivation_and_paper_copy_is_current(tmp_path):
    path = theory.export_latex(tmp_path / "theory.tex")
    text = path.read_text()
    assert text == theory.latex()
    assert r"r^\ast = \left(\frac{a n}{L b \left(2 d + 1\right) \zeta\left(\alpha + 1\right)}\right)" in text
    assert r"\iff 1 < \gamma" in text and text.count(r"\begin{equation}") == 11
    committed = theory.PAPER.read_text()
    assert committed == text, "paper/theory.tex is stale: run python -m adaptertune.analysis.theory"
