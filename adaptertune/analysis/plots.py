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
    styles = {"power": "C0", "exp": "C2", "spectral": "C5"}
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
