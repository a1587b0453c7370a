"""Does the demo's pipeline find a planted rank? The offline study run on planted tasks with known k*.

For each backbone (`--backbones`, default vit_nano), student blocks (`--blocks`, default last:1: the
teacher's adapter sits after the last block; `all`: the protocol's default) and k* (`--ranks`, default
2, 4, 8, 16) this trains the demo's sweep (`adaptertune.demo.plan_runs`: ranks 1..32 x seeds 0..2,
head-only and full fine-tuning, the demo's settings; `plan` changes the backbone and blocks, adds
ranks up to 4k* or the backbone's width, and gives k* >= 10 20 classes) through `sweep.run_sweep`,
then runs the analyses the demo runs and prints one row per (backbone, blocks, k*):

- the elbow of the capacity fit (`analysis.capacity.analyze_runs`) with its 95% interval, and the
  same doubling rule on the measured means (no fitted curve): the measured elbow;
- the elbow the spectral model predicts (`capacity_models.predict_from_spectrum`) from the tail
  energy of the full fine-tuning runs' shift (what `analyze capacity` uses) and of the highest-rank
  adapters' shift;
- the one-run rank recommendation (`analysis.recommend`) from each seed's highest-rank adapter run
  and its gain over the same seed's head-only run, with its bootstrap interval; beside it the older
  rule (the fewest directions holding 95% of the above-noise energy);
- the spectrum of the highest-rank adapter runs' feature shift (`analysis.spectrum_runs.analyze_runs`):
  the directions the seeds share (significantly; `spectrum.shared_directions`), and the directions
  holding 95% of its energy (median over seeds);
- head-only vs the adapter rank chosen on validation: `analysis.significance.compare`, one-sided,
  paired over seeds, exact sign-flip and t-test;
- whether each lands within one doubling of k* (k*/2 <= x <= 2k*) and of the measured elbow.

Runs are resumable (finished runs are skipped), so a rerun only re-analyses; head-only and full runs,
which do not depend on the blocks, are copied from another blocks' sweep of the same backbone and k*.
Rows land in OUT/planted_validation.json, merged with the rows of earlier calls (one per backbone,
blocks, k* and training settings: `--epochs`/`--lr` sweeps get their own folder and row), and the table
prints them all. About 6-7 minutes per vit_nano last:1 sweep on two idle CPU cores (358-401 s
measured); every-block students take about twice as long per run, vit_micro about five times
(measured on the quick settings). Usage:

    python benchmarks/planted_validation.py [--out DIR] [--ranks 2,4,8,16] [--backbones vit_nano,vit_micro]
        [--blocks last:1,all] [--rank-factor F] [--lr LR] [--epochs E] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from adaptertune.analysis import capacity, capacity_models, recommend, significance, spectrum_runs
from adaptertune.analysis.capacity_fit import p_text
from adaptertune.analysis.tables import text_table
from adaptertune.backbones import TINY
from adaptertune.demo import FULL, plan_runs
from adaptertune.errors import UserError
from adaptertune.runs import discover
from adaptertune.sweep import run_sweep


def sweep_ranks(k: int, width: int, factor: int | None = None) -> list[int]:
    """The demo's ranks (1..32), doubled on until they reach 4k* or the backbone's width (an adapter's rank
    cannot pass it; the width itself is then the last rank): the means' elbow is found one measured step
    below the highest rank at best, and it sits near 2k*. With `factor`, the doublings from 1 to factor·k*
    only (a cheaper sweep)."""
    ranks = list(FULL["ranks"]) if factor is None else [1]
    while ranks[-1] < min(4 * k if factor is None else factor * k, width):
        ranks.append(min(2 * ranks[-1], width))
    return ranks


def num_classes(k: int) -> int:
    """The demo's 10 classes where k* < 10, else the next multiple of 10: the teacher's head reads its k*
    directions through orthonormal label read-outs orthogonal to the all-ones vector, which needs k* < classes."""
    return 10 if k < 10 else 10 * (k // 10 + 1)


def plan(k: int, backbone: str = "vit_nano", blocks: str = "last:1", quick: bool = False,
         lr: float | None = None, epochs: int | None = None, factor: int | None = None) -> list:
    """The demo's sweep (`demo.plan_runs`) for planted rank k, with the given backbone and student blocks,
    the ranks of `sweep_ranks` and the classes of `num_classes`; `lr`/`epochs` override the demo's for
    the head and adapter runs (full fine-tuning keeps the demo's own lr)."""
    configs = plan_runs(k, quick)
    adapter = next(c for c in configs if c.method == "adapter")
    seeds = sorted({c.seed for c in configs})
    ranks = sweep_ranks(k, TINY[backbone]["embed_dim"], factor)
    configs = [c for c in configs if c.method != "adapter" or quick or c.rank in ranks]
    have = {c.rank for c in configs if c.method == "adapter"}
    extra = [] if quick else [dataclasses.replace(adapter, rank=r, seed=s) for r in ranks if r not in have for s in seeds]
    changes = dict(backbone=backbone, blocks=blocks, num_classes=max(adapter.num_classes, num_classes(k)))
    if epochs is not None:
        changes["epochs"] = epochs
    return [dataclasses.replace(c, **changes, **({"lr": lr} if lr is not None and c.method != "full" else {})).validate()
            for c in configs + extra]


def within_one_doubling(x: float | None, ref: float | None) -> bool:
    """ref/2 <= x <= 2·ref (`recommend.within_one_doubling`; False where that is unknown)."""
    return bool(recommend.within_one_doubling(x, ref))


def settings(lr: float | None = None, epochs: int | None = None) -> str:
    """"" for the demo's training settings, else what differs ("-e24", "-lr0.01"): a sweep trained otherwise
    is another experiment, with its own folder and its own row beside the demo-settings one."""
    return (f"-lr{lr:g}" if lr is not None else "") + (f"-e{epochs}" if epochs is not None else "")


def sweep_dir(out: Path, backbone: str, blocks: str, k: int, lr: float | None = None, epochs: int | None = None) -> Path:
    return out / f"{backbone}-{blocks.replace(':', '')}" / f"k{k}{settings(lr, epochs)}"


SHARED = "shared_baselines.json"  # in a sweep's folder: the head-only and full runs copied from another sweep


def reuse_baselines(configs: list, runs_dir: Path, out: Path) -> list[str]:
    """Copy into `runs_dir` the finished head-only and full runs of `configs` that another sweep under `out`
    already trained: they do not depend on the students' blocks (the same run id), so the block variants
    of one (backbone, k*) share them. Returns the run ids copied, now or by an earlier call (SHARED lists them)."""
    record = runs_dir.parent / SHARED
    copied = json.loads(record.read_text()) if record.exists() else []
    for c in configs:
        if c.method in ("head", "full") and not (runs_dir / c.run_id).exists():
            for other in sorted(out.glob(f"*/k*/runs/{c.run_id}")):
                summary = other / "summary.json"
                if summary.exists() and json.loads(summary.read_text()).get("status") == "complete":
                    shutil.copytree(other, runs_dir / c.run_id)
                    copied.append(c.run_id)
                    record.write_text(json.dumps(copied))
                    break
    return copied


def validate(k: int, out: Path, backbone: str = "vit_nano", blocks: str = "last:1", quick: bool = False,
             lr: float | None = None, epochs: int | None = None, factor: int | None = None, log=print) -> dict:
    """Train (or resume) the sweep of `plan` for planted rank k under `sweep_dir` and analyse it."""
    root = sweep_dir(out, backbone, blocks, k, lr, epochs)
    runs_dir, analysis_dir = root / "runs", root / "analysis"
    configs = plan(k, backbone, blocks, quick, lr, epochs, factor)
    reused = reuse_baselines(configs, runs_dir, out)
    start = time.perf_counter()
    status = run_sweep(configs, runs_dir, log=lambda line: log(line) if "complete" in line else None)
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
    recs, by_energy = top_recommendations(runs_dir, top)
    rec, rec_energy = (float(np.median([r.rank for r in rs])) for rs in (recs, by_energy))
    tail = np.mean([s.tail_energy / s.tail_energy[0] for s in at_top], axis=0)   # the adapters' own spectrum
    pred_adapter = capacity_models.predict_from_spectrum(tail, fit.levels, fit.means).elbow

    chosen, x, y = adapter_vs_head(runs_dir)
    paired, rng = True, np.random.default_rng(0)
    perm = significance.compare(x, y, paired=paired, alternative="greater", test="perm", rng=rng, a="adapter", b="head")
    t = significance.compare(x, y, paired=paired, alternative="greater", test="t", rng=rng, a="adapter", b="head")
    means = dict(zip((int(r) for r in fit.levels), (float(m) for m in fit.means)))
    measured = fit.elbow_means if math.isfinite(fit.elbow_means) else None
    measured_ci = [v if math.isfinite(v) else None for v in fit.elbow_means_ci]
    return {
        "k": k, "backbone": backbone, "blocks": blocks, "lr": lr, "epochs": epochs, "factor": factor,
        "status": status, "sweep_seconds": seconds, "reused": reused,
        "means": means, "best_model": fit.best.name,
        "elbow": fit.elbow, "elbow_ci": list(fit.elbow_ci), "lack_of_fit_p": fit.best.lack_of_fit_p,
        "predicted_elbow": pred.elbow if pred else None, "predicted_source": pred.source if pred else None,
        "predicted_adapter_elbow": pred_adapter,
        "top_rank": top, "shared": shared, "rank95": rank95,
        "recommended": rec, "recommendations": [{"seed": seed, **r.to_dict()} for seed, r in enumerate(recs)],
        "recommended_ci": [min(r.interval[0] for r in recs), max(r.interval[1] for r in recs)],
        "recommended_energy": rec_energy,
        "recommendations_energy": [{"seed": seed, **r.to_dict()} for seed, r in enumerate(by_energy)],
        "significant": [r.significant for r in recs], "noise_null": [r.null for r in recs],
        "top_spectra": [{"energy": [float(v) for v in s.energy[:2 * k + 4]],
                         "significant": s.significant} for s in at_top],
        "chosen_rank": chosen, "adapter_acc": float(x.mean()), "head_acc": float(y.mean()),
        "diff": perm.mean_diff, "p_perm": perm.p, "p_perm_min": perm.min_p,
        "verdict_perm": significance.verdict(perm.p, perm.min_p, 0.05), "p_t": t.p,
        "verdict_t": significance.verdict(t.p, t.min_p, 0.05),
        "measured_elbow": measured, "measured_ci": measured_ci, "measured_ok": within_one_doubling(measured, k),
        "elbow_ok": within_one_doubling(fit.elbow, k), "rank95_ok": within_one_doubling(rank95, k),
        "shared_ok": within_one_doubling(shared, k),
        "predicted_vs_measured_ok": within_one_doubling(pred.elbow if pred else None, measured),
        "predicted_adapter_vs_measured_ok": within_one_doubling(pred_adapter, measured),
        "recommended_energy_vs_measured_ok": within_one_doubling(rec_energy, measured),
        "recommended_vs_measured_ok": within_one_doubling(rec, measured),
        "recommended_ok": within_one_doubling(rec, k),
    }


def top_recommendations(runs_dir: Path, top: int) -> tuple[list, list]:
    """By seed, from each adapter run at the sweep's highest rank `top`: `recommend.recommend` with the
    run's gain over the same seed's head-only run (the doubling rule) and without it (the energy target)."""
    runs = discover(runs_dir).runs
    found = sorted((r for r in runs if r.config.get("method") == "adapter" and r.config.get("rank") == top),
                   key=lambda r: r.config["seed"])
    doubling, energy = [], []
    for run in found:
        f = run.features()
        gain = run.summary["test_acc1"] - spectrum_runs.head_accuracy(runs, run.config)
        doubling.append(recommend.recommend(f["frozen"], f["adapted"], gain=gain))
        energy.append(recommend.recommend(f["frozen"], f["adapted"]))
    return doubling, energy


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


def _blocks(r: dict) -> str:
    """The row's blocks, with the training settings where they are not the demo's ("all, 24 epochs")."""
    changed = ([f"lr {r['lr']:g}"] if r.get("lr") is not None else []) + \
        ([f"{r['epochs']} epochs"] if r.get("epochs") is not None else [])
    return ", ".join([r["blocks"], *changed])


def _ok(v) -> str:
    return "yes" if v else "NO"


def table(rows: list[dict]) -> str:
    cols = ["backbone", "blocks", "k*", "elbow [95% CI]", "model", "p lof", "ok", "measured", "ok", "predicted (full)",
            "ok m", "pred. (adapter)", "ok m", "recommended (seeds) [CI]", "ok m/k*", "rec. energy", "ok m", "shared",
            "rank95", "ok", "adapter (r) vs head", "diff", "p perm (min)", "p t", "head below"]
    lines = []
    for r in rows:
        lo, hi = r["elbow_ci"]
        seeds = "/".join(str(v["recommended_rank"]) for v in r["recommendations"])
        lines.append([
            r["backbone"], _blocks(r), str(r["k"]),
            f"{_f(r['elbow'])} [{_f(lo)}, {_f(hi) if hi is not None and math.isfinite(hi) else 'inf'}]",
            r["best_model"], p_text(r["lack_of_fit_p"]), _ok(r["elbow_ok"]),
            f"{_f(r['measured_elbow'], '.0f')} [{', '.join(_f(v, '.0f') if v else 'inf' for v in r['measured_ci'])}]",
            _ok(r["measured_ok"]), _f(r["predicted_elbow"]), _ok(r["predicted_vs_measured_ok"]),
            _f(r["predicted_adapter_elbow"]), _ok(r["predicted_adapter_vs_measured_ok"]),
            f"{r['recommended']:g} ({seeds}) [{r['recommended_ci'][0]}, {r['recommended_ci'][1]}]",
            _ok(r["recommended_vs_measured_ok"]) + "/" + _ok(r["recommended_ok"]),
            f"{r['recommended_energy']:g}", _ok(r["recommended_energy_vs_measured_ok"]),
            str(r["shared"]), f"{r['rank95']:.0f}", _ok(r["shared_ok"]) + "/" + _ok(r["rank95_ok"]),
            f"{r['adapter_acc']:.2f} (r{r['chosen_rank']}) vs {r['head_acc']:.2f}", f"{r['diff']:+.2f}",
            f"{r['p_perm']:.3f} ({r['p_perm_min']:.3f})", f"{r['p_t']:.2g}",
            "yes" if r["verdict_t"] == "significant" else r["verdict_t"]])
    out = [text_table(cols, lines)]
    means = ["accuracy by rank (mean of seeds): " + "; ".join(
        f"{r['backbone']} {_blocks(r)} k*={r['k']}: " + " ".join(f"r{rank} {acc:.1f}" for rank, acc in r["means"].items())
        for r in rows)]
    notes = ["elbow: smallest rank from which every doubling gains < 0.5 points (capacity fit, best by AICc; "
             "p lof: its lack-of-fit test against the rank means); measured: the same rule on the measured means "
             "(no fit; interval: each rank's runs resampled); ok: within one doubling of k* (k*/2 <= x <= 2k*)",
             "predicted: the elbow the spectral model predicts (capacity_models.predict_from_spectrum, calibrated on "
             "the sweep's means) from the tail energy of the full fine-tuning runs' shift (what `analyze capacity` uses) "
             "and of the highest-rank adapters' shift; ok m: within one doubling of the measured elbow",
             "recommended: the one-run rank recommendation (analysis.recommend, doubling rule) from each seed's "
             "highest-rank adapter run and its gain over the same seed's head-only run: median (per seed) [envelope "
             "of the seeds' 95% bootstrap intervals]; ok m/k*: the median within one doubling of the measured elbow / "
             "of k*; rec. energy: the same runs' fewest directions holding 95% of the above-noise energy (median)",
             "shared: directions of the highest-rank adapters' shift the seeds share (ICC significantly > 0.5); "
             "rank95: directions holding 95% of that shift's energy (median over seeds)",
             "adapter: the rank chosen on validation; one-sided paired tests over seeds; the exact sign-flip test "
             "cannot go below its min p with 3 seeds, so the verdict uses the t-test",
             "the demo's settings (demo.DEMO) unless noted; ranks 1..32, doubled on to 4k* or the backbone's width; "
             "k* >= 10 has 20 classes (the teacher needs k* < classes)"]
    for r in rows:
        changed = []
        if r.get("lr") is not None:
            changed.append("the lr of the head and adapter runs (full fine-tuning keeps the demo's)")
        if r.get("factor") is not None:
            changed.append(f"ranks 1..{r['factor']}k* only")
        if r.get("reused"):
            changed.append("head and full runs shared with the sweep of other blocks (they do not depend on the blocks)")
        if changed:
            notes.append(f"{r['backbone']} {_blocks(r)} k*={r['k']}: " + ", ".join(changed))
    return "\n".join(out + means + notes)


def markdown(rows: list[dict]) -> str:
    """The table's main columns as Markdown (the README's)."""
    head = ["backbone, blocks", "k*", "elbow on the means [95% CI]", "elbow (fit) [95% CI], model",
            "predicted: full FT / adapter tail", "recommended, per seed [CI]", "95% energy", "shared",
            "adapter (rank on val) vs head-only"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---|---|---|---:|---:|---|"]
    for r in rows:
        lo, hi = r["elbow_ci"]
        hi = _f(hi) if hi is not None and math.isfinite(hi) else "beyond the search"
        measured = ", ".join(_f(v, ".0f") if v else "beyond" for v in r["measured_ci"])
        seeds = "/".join(str(v["recommended_rank"]) for v in r["recommendations"])
        mark = lambda ok: "" if ok else " (✗)"  # noqa: E731
        lines.append("| " + " | ".join([
            f"{r['backbone']}, {_blocks(r)}", str(r["k"]), f"{_f(r['measured_elbow'], '.0f')} [{measured}]",
            f"{_f(r['elbow'])} [{_f(lo)}, {hi}], {r['best_model']}",
            f"{_f(r['predicted_elbow'])}{mark(r['predicted_vs_measured_ok'])} / "
            f"{_f(r['predicted_adapter_elbow'])}{mark(r['predicted_adapter_vs_measured_ok'])}",
            f"{r['recommended']:g}{mark(r['recommended_vs_measured_ok'])}, {seeds} "
            f"[{r['recommended_ci'][0]}, {r['recommended_ci'][1]}]",
            f"{r['recommended_energy']:g}{mark(r['recommended_energy_vs_measured_ok'])}", str(r["shared"]),
            f"{r['adapter_acc']:.2f} (r{r['chosen_rank']}) vs {r['head_acc']:.2f} (p = {r['p_t']:.2g})"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/adaptertune-planted-validation"))
    p.add_argument("--ranks", default="2,4,8,16", help="planted ranks k* to validate")
    p.add_argument("--backbones", default="vit_nano", help=f"tiny backbones, comma-separated ({', '.join(TINY)})")
    p.add_argument("--blocks", default="last:1", help="the students' adapted blocks, comma-separated (last:1, all, ...)")
    p.add_argument("--lr", type=float, help="learning rate of the head and adapter runs (default: the demo's)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: the demo's)")
    p.add_argument("--rank-factor", type=int, help="ranks 1, 2, 4, ... up to this multiple of k* only (default: the "
                   "demo's 1..32, doubled on to 4k*)")
    p.add_argument("--quick", action="store_true", help="the demo's quick settings (a smoke test, not a validation)")
    args = p.parse_args(argv)
    rows, failed = [], []
    for backbone in args.backbones.split(","):
        if backbone not in TINY:
            raise SystemExit(f"--backbones: {backbone!r} is not a tiny backbone ({', '.join(TINY)})")
        for blocks in args.blocks.split(","):
            for k in (int(v) for v in args.ranks.split(",")):
                where = sweep_dir(args.out, backbone, blocks, k, args.lr, args.epochs)
                print(f"planted k* = {k}, {backbone}, blocks {blocks}: training into {where}", flush=True)
                try:
                    rows.append(validate(k, args.out, backbone, blocks, args.quick, args.lr, args.epochs, args.rank_factor))
                except UserError as e:  # e.g. another worker still training part of a shared sweep
                    failed.append(f"planted k* = {k}, {backbone}, blocks {blocks}: {e} (rerun to re-analyse)")
                    print("  " + failed[-1], flush=True)
                    continue
                print(f"  sweep {rows[-1]['sweep_seconds']:.0f}s, measured elbow {_f(rows[-1]['measured_elbow'], 'g')}, "
                      f"recommended {rows[-1]['recommended']:g}", flush=True)
    path = args.out / "planted_validation.json"
    rows = merged(json.loads(path.read_text()) if path.exists() else [], rows)
    print()
    print(table(rows))
    print()
    print(markdown(rows))
    path.write_text(json.dumps(rows, indent=1, default=float))
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """The rows of `old` (an earlier run's JSON) that `new` does not redo, with `new`'s, in table order."""
    key = lambda r: (r["backbone"], r["blocks"], r["k"], settings(r.get("lr"), r.get("epochs")))  # noqa: E731
    redone = {key(r) for r in new}
    order = lambda r: (r["backbone"] != "vit_nano", r["backbone"], r["blocks"] != "last:1", r["blocks"], r["k"],  # noqa: E731
                       settings(r.get("lr"), r.get("epochs")))
    return sorted([r for r in old if "backbone" in r and key(r) not in redone] + new, key=order)


if __name__ == "__main__":
    raise SystemExit(main())
