"""The excess-risk capacity model, derived with sympy: risk(r) = e_inf + a*tau(r)/tau(0) + b*p(r)/n.

Terms (DESIGN.md, "The theory, in the code's own terms"): the downstream task wants the frozen
features shifted by Delta (n x d, singular values sigma_1 >= sigma_2 >= ...). A rank-r adapter
can at best remove the top r directions (Eckart-Young), leaving the tail energy
tau(r) = sum_{i>r} sigma_i^2; its p(r) = L*(r*(2d+1) + d) parameters (down d->r and up r->d,
both with bias, in each of L adapted blocks) are estimated from n samples. Risk is in
accuracy points (accuracy = 100 - risk), so a, b and e_inf are in points too.

For a power-law spectrum sigma_i^2 = s * i^(-gamma), gamma > 1:

    tau(r)   = s * zeta(gamma, r+1)              exact (Hurwitz zeta), tau(0) = s * zeta(gamma)
    tau(r)  ~= s * r^(1-gamma) / (gamma-1)       continuum form, the integral of s*x^(-gamma) over (r, oo)
    r*       = (a n / (zeta(gamma) b L (2d+1)))^(1/gamma)
               where the r*-th direction's share of the energy, a*sigma_r^2/tau(0), equals the
               estimation cost of one more rank, b*L*(2d+1)/n; the exact discrete risk is
               minimised at the integer floor(r*) (the marginal conditions coincide).
    accuracy ~= A - B r^(-alpha), alpha = gamma - 1, B = a / (alpha zeta(gamma))  (approximation-dominated)
    elbow    r_delta = (B (1 - 2^(-alpha)) / delta)^(1/alpha): the rank whose next doubling gains delta.

Diminishing returns: per added rank they always hold (the spectrum is sorted and the cost per
rank is constant, so risk is convex in r); per *doubling* of rank - the log2 axis on which an
elbow is read - the approximation gain int_r^{2r} s x^(-gamma) dx falls with r iff gamma > 1
(at gamma = 1 accuracy is linear in log r: no elbow; below 1 the gains per doubling grow).

`derive()` returns the sympy expressions; `numeric()` the functions lambdified from them;
`export_latex()` writes paper/theory.tex (`python -m adaptertune.analysis.theory`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import sympy as sp

# -- symbols ---------------------------------------------------------------------------------------
r, n, d, L = sp.symbols("r n d L", positive=True)
a, b, s, delta = sp.symbols("a b s delta", positive=True)
alpha = sp.Symbol("alpha", positive=True)     # gamma - 1 > 0: summable power-law spectra
gamma = sp.Symbol("gamma", positive=True)     # used where gamma <= 1 must be representable
B = sp.Symbol("B", positive=True)             # amplitude of the saturating power law (points)
e_inf = sp.Symbol("e_infty", nonnegative=True)
x = sp.Symbol("x", positive=True)
tau = sp.Function("tau")

PAPER = Path(__file__).resolve().parents[2] / "paper" / "theory.tex"


def param_count(rank, dim, blocks=1):
    """Adapter parameters p(r) = L*(r*(2d+1) + d): down d->r and up r->d, both with bias, per block.

    Works on ints, floats, numpy arrays (any shape, elementwise) and sympy symbols alike.
    """
    return blocks * (rank * (2 * dim + 1) + dim)


@dataclass(frozen=True)
class Theory:
    """The derivation's sympy expressions (risk in accuracy points, ranks continuous)."""

    params: sp.Expr            # p(r)
    risk: sp.Expr              # e_inf + a tau(r)/tau(0) + b p(r)/n, tau unspecified
    tail_exact: sp.Expr        # tau(r) = s zeta(gamma, r+1) for sigma_i^2 = s i^-gamma
    tail: sp.Expr              # continuum tau(r), gamma = 1 + alpha
    total: sp.Expr             # tau(0) = s zeta(1 + alpha)
    risk_power: sp.Expr        # risk with the continuum tail
    marginal: sp.Expr          # d risk / dr
    r_star: sp.Expr            # the unique stationary point (a minimum)
    curvature: sp.Expr         # d^2 risk / dr^2 (> 0: diminishing returns per rank)
    doubling_gain: sp.Expr     # int_r^{2r} s x^-gamma dx: approximation gained by doubling r
    doubling_slope: sp.Expr    # its derivative in r
    diminishing: sp.Basic      # condition on gamma for doubling gains to fall: gamma > 1
    accuracy: sp.Expr          # A - B r^-alpha  (the constant A = 100 - e_inf - b L d / n when b ~ 0)
    amplitude: sp.Expr         # B in terms of the spectrum: a / (alpha zeta(1+alpha))
    elbow: sp.Expr             # r_delta, where B r^-alpha (1 - 2^-alpha) = delta

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items()}


@functools.lru_cache(maxsize=None)
def derive() -> Theory:
    """Derive every expression of the module docstring with sympy (cached)."""
    p = param_count(r, d, L)
    risk = e_inf + a * tau(r) / tau(0) + b * p / n
    g = 1 + alpha
    tail = sp.powsimp(sp.integrate(s * x ** (-g), (x, r, sp.oo)))      # s r^-alpha / alpha
    total = s * sp.zeta(g)
    risk_power = risk.subs(tau(0), total).subs(tau(r), tail)
    marginal = sp.simplify(sp.diff(risk_power, r))
    stationary = sp.solve(sp.Eq(marginal, 0), r)
    if len(stationary) != 1:
        raise RuntimeError(f"expected one stationary rank, sympy found {stationary}")
    curvature = sp.simplify(sp.diff(risk_power, r, 2))
    gain = sp.simplify(sp.integrate(s * x ** (-gamma), (x, r, 2 * r), conds="none"))
    slope = sp.simplify(sp.diff(gain, r))
    # slope = -s r^-gamma (1 - 2^(1-gamma)): negative iff 1 - 2^(1-gamma) > 0
    factor = sp.simplify(-slope * r ** gamma / s)
    diminishing = sp.reduce_inequalities([factor > 0], gamma)
    accuracy = sp.Symbol("A") - B * r ** (-alpha)
    amplitude = sp.simplify(sp.powsimp(sp.expand(risk_power)).coeff(r ** (-alpha)))   # risk = ... + B r^-alpha
    acc_gain = sp.simplify(accuracy.subs(r, 2 * r) - accuracy)
    elbows = sp.solve(sp.Eq(acc_gain, delta), r)
    if len(elbows) != 1:
        raise RuntimeError(f"expected one elbow, sympy found {elbows}")
    return Theory(params=p, risk=risk, tail_exact=s * sp.zeta(gamma, r + 1), tail=tail, total=total,
                  risk_power=risk_power, marginal=marginal, r_star=sp.simplify(stationary[0]),
                  curvature=curvature, doubling_gain=gain, doubling_slope=slope, diminishing=diminishing,
                  accuracy=accuracy, amplitude=amplitude, elbow=sp.factor(sp.simplify(elbows[0])))


# -- numeric functions lambdified from the symbolic ones ---------------------------------------------

@dataclass(frozen=True)
class Numeric:
    """numpy/scipy callables made from `derive()`; arguments broadcast elementwise.

    risk(r, e_inf, a, b, n, d, L, gamma)      continuum risk (points), gamma > 1
    risk_exact(r, e_inf, a, b, n, d, L, gamma) with the exact tail s*zeta(gamma, r+1)
    optimal_rank(a, b, n, d, L, gamma)        r*
    doubling_gain(r, gamma)                   int_r^{2r} x^-gamma dx (s = 1), any gamma > 0, != 1
    elbow(B, alpha, delta)                    r_delta of A - B r^-alpha
    amplitude(a, gamma)                       B of the power-law spectrum
    """

    risk: Callable
    risk_exact: Callable
    optimal_rank: Callable
    doubling_gain: Callable
    elbow: Callable
    amplitude: Callable


@functools.lru_cache(maxsize=None)
def numeric() -> Numeric:
    t = derive()
    mods = ["scipy", "numpy"]
    g = sp.Symbol("g", positive=True)    # gamma as a plain argument; alpha = g - 1
    by_gamma = {alpha: g - 1}
    risk_c = t.risk_power.subs(by_gamma)
    risk_x = t.risk.subs(tau(0), s * sp.zeta(g)).subs(tau(r), t.tail_exact.subs(gamma, g))
    args = (r, e_inf, a, b, n, d, L, g)
    return Numeric(
        risk=sp.lambdify(args, risk_c.subs(s, 1), mods),
        risk_exact=sp.lambdify(args, risk_x.subs(s, 1), mods),
        optimal_rank=sp.lambdify((a, b, n, d, L, g), t.r_star.subs(by_gamma), mods),
        doubling_gain=sp.lambdify((r, gamma), t.doubling_gain.subs(s, 1), mods),
        elbow=sp.lambdify((B, alpha, delta), t.elbow, mods),
        amplitude=sp.lambdify((a, g), t.amplitude.subs(by_gamma), mods),
    )


def optimal_rank(a_, b_, n_, d_, gamma_, blocks=1) -> np.ndarray:
    """r* of the power-law model; all arguments broadcast, gamma_ > 1. Returns float array."""
    return np.asarray(numeric().optimal_rank(a_, b_, n_, d_, blocks, gamma_), dtype=float)


def power_law_elbow(B_, alpha_, delta_=0.5) -> np.ndarray:
    """The rank whose next doubling gains `delta_` points on A - B r^-alpha; broadcasts."""
    return np.asarray(numeric().elbow(B_, alpha_, delta_), dtype=float)


# -- LaTeX export ------------------------------------------------------------------------------------

def latex() -> str:
    """A LaTeX fragment (equations only, no preamble) stating the derivation's results."""
    t = derive()
    lx = functools.partial(sp.latex, symbol_names={e_inf: r"e_\infty"})
    eqs = [
        ("params", "adapter parameters (down and up projection with biases, $L$ blocks)",
         rf"p(r) = {lx(t.params)}"),
        ("risk", "excess risk (accuracy points)", rf"\mathcal{{E}}(r) = {lx(t.risk)}"),
        ("tail-exact", r"exact tail of $\sigma_i^2 = s\, i^{-\gamma}$", rf"\tau(r) = {lx(t.tail_exact)}"),
        ("tail", r"continuum tail, $\gamma = 1 + \alpha$",
         rf"\tau(r) \approx {lx(t.tail)}, \qquad \tau(0) = {lx(t.total)}"),
        ("model", "the capacity model", rf"\mathcal{{E}}(r) \approx {lx(t.risk_power)}"),
        ("rstar", "optimal rank (exact discrete optimum: $\\lfloor r^\\ast \\rfloor$)",
         rf"r^\ast = {lx(t.r_star)}"),
        ("curvature", "curvature: diminishing returns per added rank",
         rf"\frac{{d^2 \mathcal{{E}}}}{{d r^2}} = {lx(t.curvature)} > 0"),
        ("doubling", "approximation gained by doubling the rank",
         rf"G(r) = \int_r^{{2r}} s\, x^{{-\gamma}}\, dx = {lx(t.doubling_gain)}"),
        ("diminishing", "its slope; gains per doubling diminish iff",
         rf"G'(r) = {lx(t.doubling_slope)} < 0 \iff {lx(t.diminishing)}"),
        ("accuracy", "accuracy when approximation dominates",
         rf"\mathrm{{acc}}(r) \approx {lx(t.accuracy)}, \qquad B = {lx(t.amplitude)}"),
        ("elbow", r"elbow: the rank whose next doubling gains $\delta$ points",
         rf"r_\delta = {lx(t.elbow)}"),
    ]
    lines = ["% Generated by adaptertune.analysis.theory.export_latex(); do not edit by hand.",
             "% The excess-risk capacity model of adapter rank (see DESIGN.md, \"The theory\").",
             "% Labels: eq:capacity-<name>."]
    for key, label, body in eqs:
        lines += [f"% {label}", r"\begin{equation}", body, rf"\label{{eq:capacity-{key}}}", r"\end{equation}"]
    return "\n".join(lines) + "\n"


def export_latex(path: Path | str = PAPER) -> Path:
    """Write `latex()` to `path` (default paper/theory.tex, atomically); returns the path."""
    from ..runs import write_text

    path = Path(path)
    write_text(path, latex())
    return path


if __name__ == "__main__":
    print(export_latex())
