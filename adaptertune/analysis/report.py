"""`adaptertune report runs/`: one Markdown report (tables + PNG figures) from every analysis.

The report is the overview of test accuracy per method and rank; where the runs span two families or
more on a (dataset, backbone) pair, accuracy vs trainable parameters with the Pareto front across
families (pareto.png/.pdf and a table, `budgets.pareto_points`); then the sections that `spectrum`,
`capacity` and `significance` write for themselves (their figures and JSON/CSV land in the same
folder). An analysis that cannot run on these runs is named with the reason.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import UserError
from . import groups
from .budgets import pareto_points
from .tables import ANALYSIS_MODULES, count, markdown_table, output_folder

SECTIONS = tuple(ANALYSIS_MODULES)  # spectrum, capacity, significance


def overview(rows: list[dict]) -> list[dict]:
    """Mean / sd / n of test accuracy and mean val accuracy per configuration (`groups`: one row per
    dataset, backbone and config key), with its trainable parameters and share (None where seeds
    disagree), in `groups.order`; rows: `groups.labelled_rows(runs)`.

    "rank" is the capacity level of a sweep's label (adapter, LoRA: rank; VPT: prompt tokens), else None.
    Each sweep's rank chosen on validation (`groups.choose_rank`) has "chosen": True.
    """
    cells = defaultdict(list)
    for r in rows:
        if r.get("test_acc1") is not None:
            cells[(r["dataset"], r["backbone"], r["key"])].append(r)
    out = []
    for (dataset, backbone, key), rs in cells.items():
        acc = np.array([r["test_acc1"] for r in rs], dtype=float)
        val = [r.get("best_val_acc1") for r in rs]
        fractions = {r.get("trainable_fraction") for r in rs}
        counts = {r.get("trainable_params") for r in rs}
        out.append({"dataset": dataset, "backbone": backbone, "method": rs[0]["label"],
                    "rank": groups.split(rs[0]["label"])[1],
                    "key": key, "n": len(acc), "seeds": sorted(r["seed"] for r in rs if r["seed"] is not None),
                    "test_acc1": float(acc.mean()), "sd": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                    "val_acc1": None if None in val else float(np.mean(val)),
                    "trainable_fraction": fractions.pop() if len(fractions) == 1 else None,
                    "trainable_params": counts.pop() if len(counts) == 1 else None, "chosen": False})
    out.sort(key=lambda t: (str(t["dataset"]), str(t["backbone"]), groups.order(t["method"])))
    sweeps = defaultdict(dict)
    for t in out:
        if t["rank"] is not None:
            sweeps[(t["dataset"], t["backbone"], groups.split(t["method"])[0])][t["rank"]] = t
    for cands in sweeps.values():
        if all(t["val_acc1"] is not None for t in cands.values()):
            cands[groups.choose_rank({r: t["val_acc1"] for r, t in cands.items()})]["chosen"] = True
    return out


def _overview_markdown(table: list[dict]) -> str:
    rows = [[t["dataset"], t["backbone"], t["method"] + (" *" if t["chosen"] else ""), str(t["n"]),
             f"{t['test_acc1']:.2f}" + (f" ± {t['sd']:.2f}" if t["sd"] is not None else ""),
             "—" if t["val_acc1"] is None else f"{t['val_acc1']:.2f}",
             f"{100 * t['trainable_fraction']:.2f}%" if t["trainable_fraction"] is not None else "—"] for t in table]
    return (markdown_table(["dataset", "backbone", "method", "seeds", "test acc1 (%)", "val acc1 (%)",
                            "trainable / full"], rows)
            + f"\n\nOne row per configuration (its seeds pooled, nothing else); labels name what differs from the "
              f"reference protocol. * the rank chosen on validation within its sweep: {groups.TIE_RULE}.")


def pareto_markdown(points: dict, figure: str | None = None) -> str:
    """The Markdown section of `budgets.pareto_points`: per pair, each configuration with its family,
    trainable parameters and share, accuracy mean ± sd, and whether it is on the front."""
    rows = [[p.dataset, p.backbone, p.family, p.label, count(p.params),
             "—" if p.fraction is None else f"{100 * p.fraction:.2f}%",
             f"{p.mean:.2f}" + ("" if p.sd is None else f" ± {p.sd:.2f}"), "●" if p.on_front else ""]
            for ps in points.values() for p in ps]
    text = ["## Accuracy vs trainable parameters", "",
            "Every configuration of every family (test top-1, mean ± sd over seeds) against its trainable "
            "parameters; ● on the Pareto front: no other configuration of the pair is at least as accurate with "
            "no more parameters (and better in one of the two).", ""]
    text += [f"![accuracy vs trainable parameters]({figure})", ""] if figure else []
    text.append(markdown_table(["dataset", "backbone", "family", "configuration", "params", "trainable / full",
                                "test acc1 (%)", "front"], rows))
    return "\n".join(text)


def build(runs_dir: Path, out_dir: Path, *, claims: Path | None = None, title: str = "adaptertune report",
          intro: str = "", log=print) -> tuple[Path, dict]:
    """Run every analysis on `runs_dir` into `out_dir` and write `out_dir/report.md`.

    Returns (report path, {"overview": [...], "pareto": [...] (with two families or more), "spectrum": {...},
    "capacity": {...}, "significance": {...}}) where each analysis entry is its result's to_dict(), or
    {"error": reason}.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    found = runs.discover(runs_dir)
    if not found.runs:
        raise UserError(f"{runs_dir}: no complete runs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = overview(groups.labelled_rows(found.runs))
    results: dict = {"overview": table}
    parts = [f"# {title}", intro, f"Runs: {len(found.runs)} complete from `{runs_dir}`"
             + (f"; {len(found.skipped)} skipped." if found.skipped else "."), "## Test accuracy",
             _overview_markdown(table)]
    points = pareto_points(table)
    if points:
        from . import plots

        figure = plots.save(plots.pareto_figure(points), out_dir / "pareto.png")
        parts.append(pareto_markdown(points, figure.name))
        results["pareto"] = [p.to_dict() for ps in points.values() for p in ps]
    for name in SECTIONS:
        module = importlib.import_module(f"adaptertune.analysis.{ANALYSIS_MODULES[name]}")
        options = {"claims": claims} if name == "significance" and claims else {}
        try:
            result = module.analyze_runs(runs_dir, out_dir, **options)
        except UserError as e:
            log(f"report: {name} analysis skipped: {e}")
            results[name] = {"error": str(e)}
            parts.append(f"## {name.capitalize()}\n\n_Not available for these runs: {e}_")
            continue
        results[name] = result.to_dict()
        parts.append(result.markdown())
    if found.skipped:
        parts.append("## Skipped runs\n\n" + "\n".join(f"- `{p}`: {why}" for p, why in found.skipped))
    path = out_dir / "report.md"
    runs.write_text(path, "\n\n".join(p for p in parts if p) + "\n")
    runs.write_json(out_dir / "report.json", results)
    return path, results


def add_arguments(parser) -> None:
    parser.add_argument("--claims", type=Path, default=None, help="claims TOML for the significance section")


def run_command(args) -> int:
    path, _ = build(args.runs, output_folder(args), claims=args.claims)
    print(f"report: {path}")
    return 0
