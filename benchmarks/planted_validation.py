"""Does the demo's pipeline find a planted rank? The offline study run on planted tasks with known k*.

For each k* (default 2, 4, 8) this trains the demo's sweep on the planted task with that k*
(`adaptertune.demo.plan_runs`: ranks 1..32 x seeds 0..2, head-only and full fine-tuning, the demo's
settings) through `sweep.run_sweep`, then runs the analyses the demo runs and prints one row per k*:

- the elbow of the capacity fit (`analysis.capacity.analyze_runs`) with its 95% interval, the
  elbow predicted from the feature shift's spectrum, and the same doubling rule on the measured
  means (no fitted curve);
- the spectrum of the highest-rank adapter runs' feature shift (`analysis.spectrum_runs.analyze_runs`):
  the directions the seeds share (significantly; `spectrum.shared_directions`), and the directions
  holding 95% of its energy (median over seeds);
- head-only vs the adapter rank chosen on validation: `analysis.significance.compare`, one-sided,
  paired over seeds, exact sign-flip and t-test;
- whether the elbow and the shared directions land within one doubling of k* (k*/2 <= x <= 2k*).

Runs are resumable (finished runs are skipped), so a rerun only re-analyses. About 6-7 minutes per
k* on two idle CPU cores (358-401 s measured). Usage:

    python benchmarks/planted_validation.py [--out DIR] [--ranks 2,4,8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from adaptertune.analysis import capacity, significance, spectrum_runs
from adaptertune.analysis.capacity_fit import p_text
from adaptertune.analysis.tables import text_table
from adaptertune.demo import plan_runs
from adaptertune.sweep import run_sweep


def within_one_doubling(x: float | None, k: int) -> bool:
    return x is not None and math.isfinite(x) and k / 2 <= x <= 2 * k


def validate(k: int, out: Path, quick: bool = False, log=print) -> dict:
    """Train (or resume) the demo sweep for planted rank k under out/k{k} and analyse it."""
    runs_dir, analysis_dir = out / f"k{k}" / "runs", out / f"k{k}" / "analysis"
    start = time.perf_counter()
    status = run_sweep(plan_runs(k, quick), runs_dir, log=lambda line: log(line) if "complete" in line else None)
    seconds = time.perf_counter() - start

    cap = capacity.analyze_runs(runs_dir, analysis_dir, plot=False)
    fit = cap.groups[0].fit
    pred = cap.groups[0].prediction

    spec = spectrum_runs.analyze_runs(runs_dir, analysis_dir, plot=False)
    adapters = [r for r in spec.runs if r.row.get("method") == "adapter"]
    top = max(r.row["rank"] for r in adapters)
    at_top = [r.spectrum for r in adapters if r.row["rank"] == top]
    shared = next(g["shared"] for g in spec.shared if g["method"] == "adapter" and g["rank"] == top)
    rank95 = float(np.median([s.rank_for(0.95) for s in at_top]))

    chosen, x, y = adapter_vs_head(runs_dir)
    paired, rng = True, np.random.default_rng(0)
    perm = significance.compare(x, y, paired=paired, alternative="greater", test="perm", rng=rng, a="adapter", b="head")
    t = significance.compare(x, y, paired=paired, alternative="greater", test="t", rng=rng, a="adapter", b="head")
    means = dict(zip((int(r) for r in fit.levels), (float(m) for m in fit.means)))
    measured = fit.elbow_means if math.isfinite(fit.elbow_means) else None
    measured_ci = [v if math.isfinite(v) else None for v in fit.elbow_means_ci]
    return {
        "k": k, "status": status, "sweep_seconds": seconds,
        "means": means, "best_model": fit.best.name,
        "elbow": fit.elbow, "elbow_ci": list(fit.elbow_ci), "lack_of_fit_p": fit.best.lack_of_fit_p,
        "predicted_elbow": pred.elbow if pred else None,
        "top_rank": top, "shared": shared, "rank95": rank95,
        "chosen_rank": chosen, "adapter_acc": float(x.mean()), "head_acc": float(y.mean()),
        "diff": perm.mean_diff, "p_perm": perm.p, "p_perm_min": perm.min_p,
        "verdict_perm": significance.verdict(perm.p, perm.min_p, 0.05), "p_t": t.p,
        "verdict_t": significance.verdict(t.p, t.min_p, 0.05),
        "measured_elbow": measured, "measured_ci": measured_ci, "measured_ok": within_one_doubling(measured, k),
        "elbow_ok": within_one_doubling(fit.elbow, k), "rank95_ok": within_one_doubling(rank95, k),
        "shared_ok": within_one_doubling(shared, k),
    }


def adapter_vs_head(runs_dir: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """(rank, adapter test acc (seeds,), head test acc (seeds,)): the rank that `analysis.significance`
    selects on validation for the demo's adapter sweep (`groups.choose_rank`: the highest mean
    best_val_acc1, ties to the smaller rank; the report and the demo headline choose the same), paired by seed."""
    table = significance.load_table(runs_dir)
    (dataset, backbone, sweep), (rank, _) = sorted(table.selected.items())[0]  # the demo has one sweep
    x, y, _, _ = significance.paired_values(table, (dataset, backbone), sweep, "head")
    return rank, x, y


def _f(v, fmt=".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def table(rows: list[dict]) -> str:
    cols = ["k*", "elbow [95% CI]", "model", "p lof", "predicted", "ok", "measured", "ok", "shared", "rank95",
            "ok", "adapter (r) vs head", "diff", "p perm (min)", "p t", "head below"]
    lines = []
    for r in rows:
        lo, hi = r["elbow_ci"]
        lines.append([
            str(r["k"]), f"{_f(r['elbow'])} [{_f(lo)}, {_f(hi) if hi is not None and math.isfinite(hi) else 'inf'}]",
            r["best_model"], p_text(r["lack_of_fit_p"]), _f(r["predicted_elbow"]), "yes" if r["elbow_ok"] else "NO",
            f"{_f(r['measured_elbow'], '.0f')} [{', '.join(_f(v, '.0f') if v else 'inf' for v in r['measured_ci'])}]",
            "yes" if r["measured_ok"] else "NO",
            str(r["shared"]), f"{r['rank95']:.0f}",
            ("yes" if r["shared_ok"] else "NO") + "/" + ("yes" if r["rank95_ok"] else "NO"),
            f"{r['adapter_acc']:.2f} (r{r['chosen_rank']}) vs {r['head_acc']:.2f}", f"{r['diff']:+.2f}",
            f"{r['p_perm']:.3f} ({r['p_perm_min']:.3f})", f"{r['p_t']:.2g}",
            "yes" if r["verdict_t"] == "significant" else r["verdict_t"]])
    out = [text_table(cols, lines)]
    means = ["accuracy by rank (mean of seeds): " + "; ".join(
        f"k*={r['k']}: " + " ".join(f"r{rank} {acc:.1f}" for rank, acc in r["means"].items()) for r in rows)]
    notes = ["elbow: smallest rank from which every doubling gains < 0.5 points (capacity fit, best by AICc; "
             "p lof: its lack-of-fit test against the rank means); "
             "predicted: from the spectrum of the shift; measured: the same rule on the measured means (no fit; "
             "interval: each rank's runs resampled); "
             "ok: within one doubling of k* (k*/2 <= x <= 2k*)",
             "shared: directions of the highest-rank adapters' shift the seeds share (ICC significantly > 0.5); "
             "rank95: directions holding 95% of that shift's energy (median over seeds)",
             "adapter: the rank chosen on validation; one-sided paired tests over seeds; the exact sign-flip test "
             "cannot go below its min p with 3 seeds, so the verdict uses the t-test"]
    return "\n".join(out + means + notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/adaptertune-planted-validation"))
    p.add_argument("--ranks", default="2,4,8", help="planted ranks k* to validate")
    p.add_argument("--quick", action="store_true", help="the demo's quick settings (a smoke test, not a validation)")
    args = p.parse_args(argv)
    rows = []
    for k in (int(v) for v in args.ranks.split(",")):
        print(f"planted k* = {k}: training the demo sweep into {args.out / f'k{k}'}", flush=True)
        rows.append(validate(k, args.out, args.quick))
        print(f"  k* = {k}: sweep {rows[-1]['sweep_seconds']:.0f}s, elbow {rows[-1]['elbow']:.1f}", flush=True)
    print()
    print(table(rows))
    (args.out / "planted_validation.json").write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
