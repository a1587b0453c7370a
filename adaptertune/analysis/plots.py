"""Every figure of the toolkit, each a function returning a `matplotlib.figure.Figure` (headless
backend); `save` writes one as PNG and vector PDF. The only module that imports matplotlib.

    spectrum_figure(spectra)          scree, cumulative energy, directions vs adapter rank
    spectrum_blocks_figure(series)    effective rank and significant directions per block
    capacity_figure(fits)             accuracy vs rank: seeds, means, fitted models, elbow with interval
    significance_figure(comparisons)  forest plot of paired differences with verdict colours
    pareto_figure(points)             accuracy vs trainable parameters per family, the Pareto front marked
    training_curves_figure(runs)      loss and accuracy per epoch (train, val) per configuration

Each colour means one thing and has a legend entry; legends name methods and ranks, not run ids.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

# Below this share of the top direction's energy a float32 feature shift is rounding, not signal:
# each feature carries a relative error of float32's epsilon, so singular values under eps * sigma_1 are noise.
ROUNDING_FLOOR = float(np.finfo(np.float32).eps) ** 2


def save(fig: Figure, path: Path, formats=("png", "pdf")) -> Path:
    """Write `fig` as PNG (150 dpi) and PDF (vector) beside each other and close it; returns the first path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    out = [path.with_suffix("." + f) for f in formats]
    for p in out:  # no creation date in the PDF: the same figure gives the same file
        fig.savefig(p, dpi=150, **({"metadata": {"CreationDate": None}} if p.suffix == ".pdf" else {}))
    plt.close(fig)
    return out[0]


# --- spectrum ---

def _rank_colors(ranks):
    """A viridis color per adapter rank (in rank order); runs without a rank (baselines) are black."""
    known = sorted({r for r in ranks if r})
    cmap = plt.get_cmap("viridis")
    pos = {r: (i / max(len(known) - 1, 1)) * 0.9 for i, r in enumerate(known)}
    return lambda r: cmap(pos[r]) if r in pos else (0.0, 0.0, 0.0, 1.0)


def _curves(spectra) -> tuple[list[dict], list[dict]]:
    """(curves, by_rank) from a SpectrumReport, a Spectrum, a {label: Spectrum} dict or a list of either."""
    if hasattr(spectra, "runs") and hasattr(spectra, "by_rank"):  # a SpectrumReport: its runs, by configuration
        curves = [{"label": r.row.get("label") or r.row["run"], "method": r.row.get("method"),
                   "rank": r.row.get("rank"), "spectrum": r.spectrum} for r in spectra.runs]
        return curves, [{**b, "method": b["sweep"]} for b in spectra.by_rank()]
    if hasattr(spectra, "singular_values"):
        spectra = [spectra]
    items = spectra.items() if isinstance(spectra, dict) else enumerate(spectra)
    curves = []
    for name, s in items:
        if isinstance(s, dict):
            curves.append(s)
        else:
            curves.append({"label": f"shift {name + 1}" if isinstance(name, int) else str(name),
                           "method": None, "rank": None, "spectrum": s})
    return curves, []


def spectrum_figure(spectra, by_rank=()) -> Figure:
    """Scree (energy share per direction, log-log, down to the float32 rounding floor), cumulative
    energy, and (with configurations by rank) the directions the shift uses vs the adapter rank.

    spectra: a SpectrumReport, a Spectrum, {label: Spectrum}, or curve dicts {"label", "method",
    "rank" (int|None), "spectrum": Spectrum} (or "energy", "cumulative" (m,), "significant": int).
    by_rank: [{"method", "rank", "effective_rank", "effective_rank_sd", "significant", "recommended_rank"}].
    """
    curves, found = _curves(spectra)
    by_rank = list(by_rank) or found
    panels = 3 if by_rank else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8))
    color = _rank_colors([c["rank"] for c in curves])
    seen, floor = set(), []
    for c in curves:
        s = c.get("spectrum")
        energy = np.asarray(s.energy if s is not None else c["energy"], dtype=float)
        cumulative = s.cumulative if s is not None else c["cumulative"]
        k = s.significant if s is not None else c["significant"]
        if not energy.any():  # a zero shift (e.g. a linear probe) has no spectrum to draw
            continue
        idx = np.arange(1, len(energy) + 1)
        label = None if c["label"] in seen else c["label"]  # one legend entry per configuration, not per seed
        seen.add(c["label"])
        style = dict(color=color(c["rank"]), lw=1.0, alpha=0.85, ls="-" if c["rank"] else "--")
        cut = energy[0] * ROUNDING_FLOOR
        shown = energy > cut
        floor.append((cut, energy[shown].min()))
        axes[0].plot(idx[shown], energy[shown], label=label, **style)
        if 0 < k <= len(energy) and shown[k - 1]:
            axes[0].plot([k], [energy[k - 1]], "o", ms=4, color=style["color"])
        axes[1].plot(idx, cumulative, label=label, **style)
    handles, labels = [], []
    if floor:  # the axis ends just below the smallest share drawn; the floor shows where it stops them
        cut, lowest = min(c for c, _ in floor), min(v for _, v in floor)
        axes[0].set_ylim(bottom=max(cut, lowest) / 3)
        if lowest <= cut * 10:
            axes[0].axhline(cut, color="0.6", lw=0.7, ls=":")
            handles, labels = [Line2D([], [], color="0.6", lw=0.7, ls=":")], ["float32 rounding floor"]
    axes[0].set(xscale="log", yscale="log", xlabel="direction i", ylabel=r"energy share $\sigma_i^2/\sum\sigma^2$",
                title="scree of the feature shift")
    drawn, names = axes[0].get_legend_handles_labels()
    axes[0].legend(drawn + [Line2D([], [], marker="o", ls="", color="0.3", ms=4)] + handles,
                   names + ["last significant direction"] + labels, fontsize=6, loc="lower left")
    for level in (0.9, 0.95, 0.99):
        axes[1].axhline(level, color="0.6", lw=0.7, ls=":")
    axes[1].set(xscale="log", xlabel="rank r", ylabel="cumulative energy share", ylim=(0, 1.02),
                title="energy in the top r directions (90/95/99%)")
    if by_rank:
        ax = axes[2]
        measures = (("effective_rank", "o", "-", "effective rank"), ("significant", "s", "--", "significant"),
                    ("recommended_rank", "^", "-.", "recommended rank"))
        for i, method in enumerate(sorted({str(b["method"]) for b in by_rank})):
            rows = [b for b in by_rank if str(b["method"]) == method]
            r = np.array([b["rank"] for b in rows], dtype=float)
            for key, marker, ls, _ in measures:  # colour: the sweep; marker and line: the measure
                yerr = [b["effective_rank_sd"] for b in rows] if key == "effective_rank" else None
                ax.errorbar(r, [b[key] for b in rows], yerr=yerr, color=f"C{i}", marker=marker, ls=ls, capsize=3)
            ax.plot([], [], color=f"C{i}", lw=4, label=method)
        for key, marker, ls, name in measures:
            ax.plot([], [], color="0.3", marker=marker, ls=ls, label=name)
        ranks = sorted({b["rank"] for b in by_rank})
        ax.plot([ranks[0], ranks[-1]], [ranks[0], ranks[-1]], color="0.5", lw=0.8, ls=":", label="= adapter rank")
        ax.set(xlabel="adapter rank r", ylabel="directions", title="directions the shift uses")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(v) for v in ranks])
        ax.legend(fontsize=6)
    axes[1].legend(fontsize=6, loc="lower right")
    return fig


def spectrum_blocks_figure(series: list[dict]) -> Figure:
    """Effective rank and significant directions of the shift per block, one line per run.

    series: [{"label", "rank" (int|None), "blocks": [i...], "effective_rank": [...], "significant": [...]}]
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.6))
    color = _rank_colors([s["rank"] for s in series])
    seen = set()
    for s in series:
        kw = dict(color=color(s["rank"]), marker="o", ms=3, lw=1.0, label=None if s["label"] in seen else s["label"])
        seen.add(s["label"])
        axes[0].plot(s["blocks"], s["effective_rank"], **kw)
        axes[1].plot(s["blocks"], s["significant"], **kw)
    axes[0].set(xlabel="block", ylabel="effective rank", title="effective rank of the shift per block")
    axes[1].set(xlabel="block", ylabel="significant directions", title="directions above the noise floor")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    if len(seen) <= 12:
        axes[1].legend(fontsize=6)
    return fig


# --- capacity ---

MODEL_COLORS = {"power": "C0", "exp": "C2", "flat": "C4", "spectral": "C5"}   # one colour per model family
ELBOW, PREDICTED, KNEEDLE = "C3", "C1", "C8"                                    # no model shares these


def _panel(item) -> dict:
    """A capacity panel from a GroupResult (a fit with its label and spectrum prediction) or a SweepFit."""
    from .capacity_models import rank_grid

    fit, label, pred = (item.fit, item.label, item.prediction) if hasattr(item, "fit") else (item, "rank sweep", None)
    lo, hi = float(fit.levels.min()), float(fit.levels.max())
    r = rank_grid(lo / 1.3, hi * 1.3, 200)
    axis = item.key.get("axis") if hasattr(item, "key") else None
    return {"label": label, "fit": fit, "axis": axis,
            "curves": {name: (r, m.family.predict(m.theta, r)) for name, m in fit.fits.items()},
            "predicted": (r, pred.curve(r)) if pred else None, "predicted_elbow": pred.elbow if pred else None}


def _interval_bar(ax, lo: float, hi: float, y: float, color) -> None:
    """An interval [lo, hi] as a bar at axes height y; an unbounded end is an arrow past the axis."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    x_right = ax.get_xlim()[1]
    if np.isfinite(hi):
        ax.plot([lo, hi], [y, y], color=color, lw=2, transform=trans, solid_capstyle="butt")
        ax.plot([lo, hi], [y, y], "|", color=color, ms=8, transform=trans)
    else:  # beyond the search: from lo to past the right edge
        ax.annotate("", xy=(1.04, y), xycoords="axes fraction", xytext=(lo, y), textcoords=trans,
                    arrowprops=dict(arrowstyle="->", color=color, lw=2), annotation_clip=False)
        ax.plot([lo], [y], "|", color=color, ms=8, transform=trans)
    ax.set_xlim(right=x_right)


def capacity_figure(fits) -> Figure:
    """Accuracy vs adapter rank (log2 axis), one panel per sweep: each seed's runs (grey), the rank
    means with 95% intervals (black), every fitted model (its own colour; the AICc-best solid with its
    95% band), the elbow (red line) with its 95% interval as a bar (an arrow past the axis when the
    interval is unbounded), Kneedle and the curve predicted from the spectrum when there is one.

    fits: a SweepFit, a capacity GroupResult, a CapacityReport, or a list of SweepFit / GroupResult.
    """
    items = list(fits.groups) if hasattr(fits, "groups") else [fits] if hasattr(fits, "fit") or hasattr(fits, "fits") \
        else list(fits)
    panels = [_panel(i) for i in items]
    xlabel = "trainable parameters" if getattr(fits, "options", {}).get("x") == "params" else "rank r (VPT: prompt tokens)"
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        f = p["fit"]
        seeds = np.asarray(f.seeds)
        for i, s in enumerate(np.unique(seeds)):
            hit = seeds == s
            jitter = 2.0 ** (0.04 * (i - (np.unique(seeds).size - 1) / 2))
            ax.scatter(np.asarray(f.ranks)[hit] * jitter, np.asarray(f.acc)[hit], s=12, alpha=0.5,
                       color="0.45", marker="os^Dv<>"[i % 7], label=f"seed {s}" if i < 3 else None)
        yerr = np.vstack([f.means - f.ci_lo, f.ci_hi - f.means])
        ax.errorbar(f.levels, f.means, yerr=np.nan_to_num(yerr), fmt="o", color="k", ms=4, capsize=3,
                    label="mean ± 95% CI", zorder=5)
        best = f.best.name
        ax.fill_between(f.curve_r, f.band[0], f.band[1], color=MODEL_COLORS.get(best, "C7"), alpha=0.15, lw=0,
                        label=f"{best}: 95% band")
        for name, (r, y) in p["curves"].items():
            ax.plot(r, y, color=MODEL_COLORS.get(name, "C7"), lw=2 if name == best else 1,
                    ls="-" if name == best else "--", label=f"{name}{' (best by AICc)' if name == best else ''}")
        if p["predicted"] is not None:
            ax.plot(*p["predicted"], color=PREDICTED, ls=":", lw=1.5, label="predicted from spectrum")
        if p["predicted_elbow"] is not None and np.isfinite(p["predicted_elbow"]):
            ax.axvline(p["predicted_elbow"], color=PREDICTED, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        e_lo, e_hi = f.elbow_ci
        if np.isfinite(f.elbow):
            ax.axvline(f.elbow, color=ELBOW, lw=1.2, label=f"elbow (δ = {f.delta:g}): {f.elbow:.3g}")
        else:
            ax.plot([], [], color=ELBOW, lw=1.2, label="elbow: beyond the search")
        if np.isfinite(e_lo):
            _interval_bar(ax, e_lo, e_hi, 0.04, ELBOW)
            ax.plot([], [], color=ELBOW, lw=2, label="elbow 95% interval" + ("" if np.isfinite(e_hi) else " (→ unbounded)"))
        if f.kneedle is not None and np.isfinite(f.kneedle):
            ax.axvline(f.kneedle, color=KNEEDLE, ls="-.", lw=1, label=f"Kneedle {f.kneedle:.3g}")
        ax.set_xticks(f.levels, [f"{v:g}" for v in f.levels])
        ax.set(xlabel=p["axis"] or xlabel, ylabel="test accuracy (%)")
        ax.set_title(p["label"], fontsize=9)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return fig


# --- significance ---

VERDICT_COLORS = {"significant": "tab:blue", "not significant": "0.45"}
_INCONCLUSIVE = "tab:orange"


def significance_figure(comparisons, level: float = 0.95, title: str | None = None) -> Figure:
    """Forest plot of paired differences a - b, one row per comparison, the bootstrap interval as a bar;
    blue: significant, grey: not significant, hollow orange: inconclusive (underpowered).

    comparisons: a SignificanceReport, Comparison objects or their dicts ("dataset", "backbone", "a", "b",
    "mean_diff", "ci" [lo, hi] or None, "verdict")."""
    if hasattr(comparisons, "comparisons"):
        level, title = 1 - comparisons.alpha, title or (
            f"paired differences in {comparisons.metric} ({comparisons.correction}-corrected verdicts)")
        comparisons = comparisons.comparisons
    comps = [c.to_dict() if hasattr(c, "to_dict") else c for c in comparisons]
    n = len(comps)
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.28 * n))
    for i, c in enumerate(comps):
        y = n - 1 - i
        color = VERDICT_COLORS.get(c["verdict"], _INCONCLUSIVE)
        if c.get("ci"):
            ax.plot(c["ci"], [y, y], color=color, lw=1.5)
        hollow = str(c["verdict"]).startswith("inconclusive")
        ax.plot(c["mean_diff"], y, "o", color=color, mfc="white" if hollow else color, ms=5)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{c['dataset']}/{c['backbone']}: {c['a']} - {c['b']}" for c in comps][::-1], fontsize=7)
    ax.set_xlabel(f"difference a - b (points), mean and {level:.0%} bootstrap interval")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_title(title or "paired differences between methods", fontsize=9)
    legend = [Line2D([], [], color=VERDICT_COLORS["significant"], marker="o", label="significant"),
              Line2D([], [], color=VERDICT_COLORS["not significant"], marker="o", label="not significant"),
              Line2D([], [], color=_INCONCLUSIVE, marker="o", mfc="white", label="inconclusive (underpowered)")]
    ax.legend(handles=legend, fontsize=6, loc="best", framealpha=0.9)
    return fig


# --- accuracy vs trainable parameters ---

FRONT = "k"


def pareto_figure(points) -> Figure:
    """Test accuracy (mean ± sd over seeds) vs trainable parameters (log axis), one panel per (dataset,
    backbone): one series per family (its configurations joined in parameter order, one colour each, the
    same in every panel), the Pareto front as a black staircase through its points (ringed).

    points: {(dataset, backbone): [ParetoPoint]} (`budgets.pareto_points`) or a list of ParetoPoint / their
    dicts ("dataset", "backbone", "family", "label", "params", "mean", "sd", "on_front")."""
    from . import groups

    items = [p for ps in points.values() for p in ps] if isinstance(points, dict) else list(points)
    items = [p.to_dict() if hasattr(p, "to_dict") else p for p in items]
    pairs = sorted({(p["dataset"], p["backbone"]) for p in items})
    families = sorted({p["family"] for p in items}, key=groups.order)
    color = {f: f"C{i % 10}" for i, f in enumerate(families)}
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
        here = sorted((p for p in items if (p["dataset"], p["backbone"]) == pair), key=lambda p: p["params"])
        for f in families:
            series = [p for p in here if p["family"] == f]
            if series:
                ax.errorbar([p["params"] for p in series], [p["mean"] for p in series],
                            yerr=[p["sd"] or 0.0 for p in series], fmt="o-", color=color[f], ms=4, capsize=2,
                            lw=1, label=f)
        front = [p for p in here if p["on_front"]]
        # the best accuracy attainable at each budget: flat from each front point to the next, then to the last point
        ax.step([p["params"] for p in front] + [here[-1]["params"]], [p["mean"] for p in front] + [front[-1]["mean"]],
                where="post", color=FRONT, lw=1, ls="--")
        ax.scatter([p["params"] for p in front], [p["mean"] for p in front], s=90, facecolors="none",
                   edgecolors=FRONT, lw=1, zorder=6, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels collide
        ax.set(xlabel="trainable parameters", ylabel="test accuracy (%)")
        ax.set_title(f"{pair[0]}/{pair[1]}", fontsize=9)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    return fig


# --- training ---

def training_curves_figure(runs) -> Figure:
    """Loss and top-1 accuracy per epoch, train (solid) and validation (dashed), one colour per
    configuration (mean over its seeds); the test accuracy at the end as a star.

    runs: a runs folder, a `runs.Discovery`, or a list of `runs.Run`."""
    from .. import runs as runs_module
    from . import groups

    if isinstance(runs, (str, Path)):
        runs = runs_module.discover(Path(runs)).runs
    elif hasattr(runs, "runs"):
        runs = runs.runs
    runs = list(runs)
    labels = groups.labels([r.config for r in runs])
    order = sorted(set(labels), key=groups.order)
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.6))
    for i, label in enumerate(order):
        members = [r for r, lab in zip(runs, labels) if lab == label]
        color = f"C{i % 10}"
        for split, ls in (("train", "-"), ("val", "--")):
            for j, key in enumerate(("loss", "acc1")):
                by_epoch: dict[int, list] = {}
                for r in members:
                    for m in r.metrics():
                        if m.get("split") == split and m.get(key) is not None:
                            by_epoch.setdefault(int(m["epoch"]), []).append(float(m[key]))
                if by_epoch:
                    epochs = sorted(by_epoch)
                    axes[j].plot(epochs, [np.mean(by_epoch[e]) for e in epochs], color=color, ls=ls, marker=".",
                                 label=label if split == "train" and j == 0 else None)
        test = [r.summary.get("test_acc1") for r in members if r.summary.get("test_acc1") is not None]
        last = max((int(m["epoch"]) for r in members for m in r.metrics() if "epoch" in m), default=None)
        if test and last is not None:
            axes[1].plot([last], [np.mean(test)], "*", color=color, ms=9)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss per epoch (mean over seeds)")
    axes[1].set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy per epoch (mean over seeds)")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, names = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--"),
                Line2D([], [], color="0.3", marker="*", ls="", ms=9)]
    names += ["train", "validation", "test (end)"]
    axes[1].legend(handles, names, fontsize=6, loc="lower right")
    return fig
