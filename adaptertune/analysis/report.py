"""`adaptertune report runs/`: one Markdown report (tables + PNG figures) from every analysis.

The report is the overview of test accuracy per method and rank, then the sections that
`spectrum`, `capacity` and `significance` write for themselves (their figures and JSON/CSV land
in the same folder). An analysis that cannot run on these runs is named with the reason.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import UserError
from .tables import markdown_table, output_folder

SECTIONS = ("spectrum", "capacity", "significance")


def method_label(row: dict) -> str:
    return f"adapter-r{row['rank']}" if row["method"] == "adapter" else row["method"]


def overview(rows: list[dict]) -> list[dict]:
    """Mean / sd / n of test accuracy (and mean val accuracy) per (dataset, backbone, method label)."""
    groups = defaultdict(list)
    for r in rows:
        if r.get("test_acc1") is not None:
            groups[(r["dataset"], r["backbone"], method_label(r), r["rank"] or 0)].append(r)
    out = []
    for (dataset, backbone, label, _), rs in sorted(groups.items()):
        acc = np.array([r["test_acc1"] for r in rs], dtype=float)
        out.append({"dataset": dataset, "backbone": backbone, "method": label, "n": len(acc),
                    "test_acc1": float(acc.mean()),
                    "val_acc1": float(np.mean([r["best_val_acc1"] for r in rs])), "sd": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                    "trainable_fraction": rs[0].get("trainable_fraction")})
    return out


def _overview_markdown(table: list[dict]) -> str:
    rows = [[t["dataset"], t["backbone"], t["method"], str(t["n"]),
             f"{t['test_acc1']:.2f}" + (f" ± {t['sd']:.2f}" if t["sd"] is not None else ""),
             f"{100 * t['trainable_fraction']:.2f}%" if t["trainable_fraction"] is not None else "—"] for t in table]
    return markdown_table(["dataset", "backbone", "method", "seeds", "test acc1 (%)", "trainable / full"], rows)


def build(runs_dir: Path, out_dir: Path, *, claims: Path | None = None, title: str = "adaptertune report",
          intro: str = "", log=print) -> tuple[Path, dict]:
    """Run every analysis on `runs_dir` into `out_dir` and write `out_dir/report.md`.

    Returns (report path, {"overview": [...], "spectrum": {...}, "capacity": {...}, "significance": {...}})
    where each analysis entry is its result's to_dict(), or {"error": reason}.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    found = runs.discover(runs_dir)
    if not found.runs:
        raise UserError(f"{runs_dir}: no complete runs to report on")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = overview(found.rows())
    results: dict = {"overview": table}
    parts = [f"# {title}", intro, f"Runs: {len(found.runs)} complete from `{runs_dir}`"
             + (f"; {len(found.skipped)} skipped." if found.skipped else "."), "## Test accuracy",
             _overview_markdown(table)]
    for name in SECTIONS:
        module = importlib.import_module(f"adaptertune.analysis.{name}")
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
