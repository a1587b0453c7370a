"""Every figure of the toolkit; the only module that imports matplotlib (headless backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: Path) -> Path:
    """Write `fig` as PNG (and PDF beside it, for LaTeX) and close it; returns the PNG path."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


# --- spectrum ---

def _rank_colors(ranks):
    """A viridis color per adapter rank (in rank order); runs without a rank (baselines) are black."""
    known = sorted({r for r in ranks if r})
    cmap = plt.get_cmap("viridis")
    pos = {r: (i / max(len(known) - 1, 1)) * 0.9 for i, r in enumerate(known)}
    return lambda r: cmap(pos[r]) if r in pos else (0.0, 0.0, 0.0, 1.0)


def spectrum_figure(curves: list[dict], by_rank: list[dict], path: Path) -> Path:
    """Scree (energy share per direction, log-log) and cumulative energy per run; effective rank vs adapter rank.

    curves: [{"label", "method", "rank" (int|None), "energy": (m,), "cumulative": (m,), "significant": int}]
    by_rank: [{"method", "rank", "effective_rank", "effective_rank_sd", "significant", "recommended_rank"}] (may be empty)
    """
    import numpy as np

    panels = 3 if by_rank else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8))
    color = _rank_colors([c["rank"] for c in curves])
    seen = set()
    for c in curves:
        energy = np.asarray(c["energy"], dtype=float)
        if not energy.any():  # a zero shift (e.g. a linear probe) has no spectrum to draw
            continue
        idx = np.arange(1, len(energy) + 1)
        group = (c["method"], c["rank"])
        label = None if len(curves) > 10 and group in seen else (
            c["label"] if len(curves) <= 10 else f"{c['method']}" + (f" r{c['rank']}" if c["rank"] else ""))
        seen.add(group)
        style = dict(color=color(c["rank"]), lw=1.0, alpha=0.85, ls="-" if c["rank"] else "--")
        shown = energy > 1e-15  # zeros (and round-off) cannot sit on a log axis
        axes[0].plot(idx[shown], energy[shown], label=label, **style)
        k = c["significant"]
        if 0 < k <= len(energy) and shown[k - 1]:
            axes[0].plot([k], [energy[k - 1]], "o", ms=4, color=style["color"])
        axes[1].plot(idx, c["cumulative"], label=label, **style)
    axes[0].set(xscale="log", yscale="log", xlabel="direction i", ylabel=r"energy share $\sigma_i^2/\sum\sigma^2$",
                title="scree of the feature shift (● last significant)")
    for level in (0.9, 0.95, 0.99):
        axes[1].axhline(level, color="0.6", lw=0.7, ls=":")
    axes[1].set(xscale="log", xlabel="rank r", ylabel="cumulative energy share", ylim=(0, 1.02),
                title="energy in the top r directions")
    if by_rank:
        ax = axes[2]
        for method in sorted({str(b["method"]) for b in by_rank}):
            rows = [b for b in by_rank if str(b["method"]) == method]
            r = np.array([b["rank"] for b in rows], dtype=float)
            ax.errorbar(r, [b["effective_rank"] for b in rows], yerr=[b["effective_rank_sd"] for b in rows],
                        marker="o", capsize=3, label=f"{method}: effective rank")
            ax.plot(r, [b["significant"] for b in rows], marker="s", ls="--", label=f"{method}: significant")
            ax.plot(r, [b["recommended_rank"] for b in rows], marker="^", ls="-.", label=f"{method}: recommended rank")
        lim = np.array([min(b["rank"] for b in by_rank), max(b["rank"] for b in by_rank)], dtype=float)
        ax.plot(lim, lim, color="0.5", lw=0.8, ls=":", label="= adapter rank")
        ax.set(xlabel="adapter rank r", ylabel="directions", title="directions the shift uses")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({b["rank"] for b in by_rank}), [str(v) for v in sorted({b["rank"] for b in by_rank})])
        ax.legend(fontsize=7)
    axes[1].legend(fontsize=6, loc="lower right")
    return save(fig, path)


def spectrum_blocks_figure(series: list[dict], path: Path) -> Path:
    """Effective rank and significant directions of the shift per block, one line per run.

    series: [{"label", "rank" (int|None), "blocks": [i...], "effective_rank": [...], "significant": [...]}]
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.6))
    color = _rank_colors([s["rank"] for s in series])
    for s in series:
        kw = dict(color=color(s["rank"]), marker="o", ms=3, lw=1.0, label=s["label"] if len(series) <= 10 else None)
        axes[0].plot(s["blocks"], s["effective_rank"], **kw)
        axes[1].plot(s["blocks"], s["significant"], **kw)
    axes[0].set(xlabel="block", ylabel="effective rank", title="effective rank of the shift per block")
    axes[1].set(xlabel="block", ylabel="significant directions", title="directions above the noise floor")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    if len(series) <= 10:
        axes[1].legend(fontsize=6)
    return save(fig, path)


# --- capacity ---

def capacity_figure(panels: list[dict], path: Path) -> Path:
    """One panel per rank sweep: accuracy vs rank (log2 axis).

    Each panel dict: label; ranks, seeds, acc (n,) the runs; levels, means, ci_lo, ci_hi (k,) per rank;
    curves {model: (r (G,), acc (G,))}; best (model name); band (r, lo, hi) of the best fit; elbow,
    elbow_ci (lo, hi) (inf: beyond the horizon); kneedle; delta; predicted (r, acc) or None (from the
    spectrum); predicted_elbow or None.
    """
    import numpy as np

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    styles = {"power": "C0", "exp": "C2", "flat": "C3", "spectral": "C5"}
    for ax, p in zip(axes.flat, panels):
        seeds = np.asarray(p["seeds"])
        for i, s in enumerate(np.unique(seeds)):
            hit = seeds == s
            jitter = 2.0 ** (0.04 * (i - (np.unique(seeds).size - 1) / 2))
            ax.scatter(np.asarray(p["ranks"])[hit] * jitter, np.asarray(p["acc"])[hit], s=12, alpha=0.5,
                       color="0.45", marker="os^Dv<>"[i % 7], label=f"seed {s}" if i < 3 else None)
        yerr = np.vstack([p["means"] - p["ci_lo"], p["ci_hi"] - p["means"]])
        ax.errorbar(p["levels"], p["means"], yerr=np.nan_to_num(yerr), fmt="o", color="k", ms=4, capsize=3,
                    label="mean ± 95% CI", zorder=5)
        r_band, lo, hi = p["band"]
        ax.fill_between(r_band, lo, hi, color=styles.get(p["best"], "C0"), alpha=0.15, lw=0)
        for name, (r, y) in p["curves"].items():
            best = name == p["best"]
            ax.plot(r, y, color=styles.get(name, "C4"), lw=2 if best else 1, ls="-" if best else "--",
                    label=f"{name}{' (best)' if best else ''}")
        if p.get("predicted") is not None:
            ax.plot(*p["predicted"], color="C1", ls=":", lw=1.5, label="predicted from spectrum")
        if p.get("predicted_elbow") is not None and np.isfinite(p["predicted_elbow"]):
            ax.axvline(p["predicted_elbow"], color="C1", ls=":", lw=1)
        elbow, (e_lo, e_hi) = p["elbow"], p["elbow_ci"]
        if np.isfinite(elbow):
            ax.axvline(elbow, color="C3", lw=1.2, label=f"elbow (δ={p['delta']:g}) {elbow:.3g}")
            right = e_hi if np.isfinite(e_hi) else ax.get_xlim()[1]
            if np.isfinite(e_lo):
                ax.axvspan(e_lo, right, color="C3", alpha=0.08, lw=0)
        if p.get("kneedle") is not None and np.isfinite(p["kneedle"]):
            ax.axvline(p["kneedle"], color="C4", ls="-.", lw=1, label=f"Kneedle {p['kneedle']:.3g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("adapter rank r")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(p["label"], fontsize=9)
        ax.legend(fontsize=6.5, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return save(fig, path)


# --- significance ---

_VERDICT_COLORS = {"significant": "tab:blue", "not significant": "0.45"}


def plot_significance(comparisons: list[dict], path: Path, level: float = 0.95) -> Path:
    """Forest plot of paired differences a - b: one row per comparison (dicts with "dataset",
    "backbone", "a", "b", "mean_diff", "ci" [lo, hi] or None, "verdict"), the bootstrap interval as a
    bar; blue: significant, grey: not significant, hollow orange: inconclusive (underpowered)."""
    n = len(comparisons)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.28 * n))
    for i, c in enumerate(comparisons):
        y = n - 1 - i
        color = _VERDICT_COLORS.get(c["verdict"], "tab:orange")
        if c.get("ci"):
            ax.plot(c["ci"], [y, y], color=color, lw=1.5)
        hollow = str(c["verdict"]).startswith("inconclusive")
        ax.plot(c["mean_diff"], y, "o", color=color, mfc="white" if hollow else color, ms=5)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{c['dataset']}/{c['backbone']}: {c['a']} - {c['b']}" for c in comparisons][::-1],
                       fontsize=7)
    ax.set_xlabel(f"difference (points), {level:.0%} bootstrap interval")
    ax.set_ylim(-0.7, n - 0.3)
    return save(fig, path)
