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
