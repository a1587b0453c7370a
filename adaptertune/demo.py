"""Offline end-to-end study on a planted task: train a rank sweep + baselines, analyse, report.

A tiny random ViT (`vit_nano`, no download) is the frozen backbone; the planted teacher adds a
rank-k* adapter after its last block (planted.py), so the right answer is known. The students
adapt the same block (`--blocks last:1`) at ranks 1..32 with 3 seeds, beside head-only and full
fine-tuning, through the same `train` and `analyze` code as real data. It prints the headline
(elbow found vs k* planted; adapter vs head-only vs full) and writes the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import Config

# The study's settings: every value here is a plain `adaptertune train` flag. Tuned on planted tasks
# with k* = 2, 4 and 8 (benchmarks/planted_validation.py) for a 24-run sweep of 6-7 minutes on
# two idle CPU cores: 8 epochs of 14,400 images at batch 128 (~900 steps) with a high learning rate
# (0.3 at batch 1024, i.e. 0.0375 here); at the reference lr (5e-4) nothing is learned in this
# budget. Full fine-tuning gets FULL_LR instead: at 0.3 it collapses on some seeds (25% test accuracy).
DEMO = dict(dataset="planted", backbone="vit_nano", weights="none", blocks="last:1", augment=False,
            epochs=8, batch_size=128, lr=0.3, warmup_epochs=1, train_samples=16000, test_samples=1000,
            feature_samples=1000, num_classes=10, planted_strength=1.0, log_every=0)
FULL_LR = 0.03
FULL = dict(ranks=[1, 2, 4, 8, 16, 32], seeds=[0, 1, 2])
QUICK = dict(ranks=[1, 2, 4], seeds=[0, 1], epochs=2, train_samples=600, test_samples=200, feature_samples=200)


def plan_runs(planted_rank: int = 4, quick: bool = False) -> list[Config]:
    """The demo's runs on the planted task with k* = `planted_rank`: head, full, then adapters by rank."""
    from .sweep import plan

    settings = {**DEMO, **(QUICK if quick else {})}
    ranks, seeds = settings.pop("ranks", FULL["ranks"]), settings.pop("seeds", FULL["seeds"])
    base = Config(**settings, planted_rank=planted_rank)
    full = Config(**{**settings, "lr": FULL_LR}, planted_rank=planted_rank)
    return (plan(base, ["head"], ranks, seeds) + plan(full, ["full"], ranks, seeds)
            + plan(base, ["adapter"], ranks, seeds))


def runs(out: Path, planted_rank: int = 4, quick: bool = True, log=print) -> Path:
    """The demo's runs (trained where not finished yet) in `out`; returns `out`. For notebooks and tests."""
    from .sweep import run_sweep

    run_sweep(plan_runs(planted_rank, quick), Path(out), log=log)
    return Path(out)


def run(out: Path, planted_rank: int = 4, quick: bool = False, log=print) -> int:
    from .analysis import report
    from .sweep import run_sweep

    configs = plan_runs(planted_rank, quick)
    ranks = sorted({c.rank for c in configs if c.method == "adapter"})
    seeds = sorted({c.seed for c in configs})
    out = Path(out)
    runs_dir, report_dir = out / "runs", out / "report"
    log(f"demo: planted task with k* = {planted_rank}; {len(ranks)} ranks x {len(seeds)} seeds + head + full "
        f"-> {runs_dir}")
    status = run_sweep(configs, runs_dir, log=lambda line: log(line) if line.startswith("[") else None)
    intro = (f"Planted task: the teacher is the frozen `{configs[0].backbone}` plus a rank-{planted_rank} adapter "
             f"after its last block; students adapt the same block. The elbow should sit near k* = {planted_rank}.")
    path, results = report.build(runs_dir, report_dir, title="adaptertune demo: a planted rank sweep",
                                 intro=intro, log=log)
    for line in headline(results, planted_rank):
        log(line)
    log(f"report: {path}")
    return status


def headline(results: dict, planted_rank: int) -> list[str]:
    """Lines naming the elbow found vs the planted k*, and adapter vs head-only vs full."""
    lines = []
    groups = results.get("capacity", {}).get("groups") or []
    if groups:
        g = groups[0]
        elbow = _estimate(g.get("elbow"), g.get("elbow_ci"), ".1f")
        means = _estimate(g.get("elbow_means"), g.get("elbow_means_ci"), "g")
        lines.append(f"elbow found: {elbow}, best model {g.get('best_model')} (on the means, no curve: {means}); "
                     f"planted k* = {planted_rank}")
    else:
        lines.append(f"elbow: not fitted ({results.get('capacity', {}).get('error', 'no groups')})")
    spec = results.get("spectrum", {})
    runs = [r for r in spec.get("runs", []) if r.get("method") == "adapter"]
    if runs:
        top = max(r["rank"] for r in runs)
        rank95 = np.median([r["rank95"] for r in runs if r["rank"] == top])
        shared = [g["shared"] for g in spec.get("shared", []) if g["method"] == "adapter" and g["rank"] == top]
        seeds = f"{shared[0]} directions shared across seeds, " if shared else ""
        lines.append(f"spectrum: adapter r={top} shifts: {seeds}95% of the energy in {rank95:.0f} directions "
                     f"(median over seeds); planted k* = {planted_rank}")
    table = results["overview"]
    pair = (table[0]["dataset"], table[0]["backbone"]) if table else None
    rows = [t for t in table if (t["dataset"], t["backbone"]) == pair]
    best = next((t for t in rows if t["chosen"]), None)  # the report's choice on validation (ties: the smaller rank)
    if best:
        parts = [f"adapter ({best['method']}, chosen on val) {best['test_acc1']:.2f}"]
        parts += [f"{t['method']} {t['test_acc1']:.2f}" for t in rows if t["method"] in ("head", "full")]
        lines.append("test acc1 (mean over seeds): " + ", ".join(parts))
    return lines


def _estimate(value, ci, fmt: str) -> str:
    """"r = v (95% CI lo-hi)" of an elbow from JSON, where None means not found (hi: beyond the search)."""
    if value is None:
        return "none within the swept ranks"
    lo, hi = ci or (None, None)
    bounds = f" (95% CI {lo:{fmt}}-{'beyond the search' if hi is None else format(hi, fmt)})" if lo is not None else ""
    return f"r = {value:{fmt}}{bounds}"
