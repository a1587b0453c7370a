"""The tidy table the significance analysis and the claims work on: metric values by (dataset, backbone,
configuration label) and seed, read from run directories or a CSV, with each sweep's rank chosen on
validation (`groups.choose_rank`); `paired_values` pairs two labels' seeds.

Imports no torch and no plotting.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import runs
from ..errors import UserError
from . import groups


@dataclass(frozen=True)
class Table:
    """Metric values by (dataset, backbone, label) -> {seed: value}, one configuration per label; each
    sweep's label without the rank ("adapter", "adapter-attn") is the rank selected on validation per
    pair (`selected`: (dataset, backbone, sweep label) -> (rank, mean best_val_acc1)); `params`:
    (dataset, backbone, label) -> its trainable parameters (summary.json's `trainable_params`), where known."""
    metric: str
    cells: dict
    selected: dict
    source: Path | None = None
    notes: tuple = ()
    params: dict = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        return sorted({(d, b) for d, b, _ in self.cells})

    def labels(self, pair: tuple[str, str] | None = None) -> list[str]:
        found = {lab for d, b, lab in self.cells if pair is None or (d, b) == pair}
        return sorted(found, key=groups.order)

    def values(self, pair: tuple[str, str], label: str) -> dict[int, float]:
        return self.cells.get((*pair, label), {})

    def ranks(self, pair: tuple[str, str], sweep: str = "adapter") -> list[int]:
        """Adapter ranks of `sweep` (default: the reference configuration) run on this pair, ascending."""
        return sorted(r for s, r in map(groups.split, self.labels(pair)) if s == sweep and r is not None)

    def configurations(self, pair: tuple[str, str]) -> list[str]:
        """The labels of `pair` that are configurations, not a sweep's selected rank ("adapter")."""
        return [lab for lab in self.labels(pair) if (*pair, lab) not in self.selected]


def table_from_rows(rows: list[dict], metric: str = "test_acc1", source: Path | None = None,
                    notes: tuple = ()) -> Table:
    """Build a Table from tidy rows (dicts with dataset, backbone, method, rank, seed, the metric and
    best_val_acc1, and optionally trainable_params and any config field, or their "label":
    `groups.labelled_rows`). Rows whose status is set and not "complete", or whose metric is missing,
    are left out with a note; two rows for the same (dataset, backbone, label, seed) are an error."""
    kept, dropped = [], 0
    for row in rows:
        if row.get("status") not in (None, "", "complete") or row.get(metric) in (None, ""):
            dropped += 1
        elif row["method"] == "adapter" and row.get("rank") in (None, ""):
            raise UserError(f"{row.get('run') or row['dataset']}: an adapter row without a rank")
        else:
            kept.append(row)
    labels = [row["label"] for row in kept] if all("label" in row for row in kept) else groups.labels(kept)
    cells, val, origin, counts = {}, {}, {}, {}
    for row, label in zip(kept, labels):
        key = (str(row["dataset"]), str(row["backbone"]), label)
        if row.get("seed") is None:
            raise UserError(f"{row.get('run') or '/'.join(key)}: no seed")
        seed = int(row["seed"])
        if seed in cells.setdefault(key, {}):
            raise UserError(f"two runs for {'/'.join(key)} seed {seed}: {origin[key + (seed,)]} and "
                            f"{row.get('run') or 'another row'}; keep one")
        origin[key + (seed,)] = row.get("run") or "a row"
        cells[key][seed] = float(row[metric])
        v = row.get("best_val_acc1")
        val.setdefault(key, {})[seed] = None if v in (None, "") else float(v)
        if row.get("trainable_params") not in (None, ""):
            counts.setdefault(key, set()).add(float(row["trainable_params"]))
    if not cells:
        raise UserError(f"no runs with {metric} in {source or 'the table'}")
    notes = tuple(notes) + ((f"left out {dropped} rows that are not complete or lack {metric}",) if dropped else ())
    params = {}
    for key, found in sorted(counts.items()):
        if len(found) > 1:  # one configuration, one count: seeds that disagree cannot be matched by budget
            seen = ", ".join(f"{v:g}" for v in sorted(found))
            notes += (f"{'/'.join(key)}: trainable_params differ across seeds ({seen}); left out of the budget "
                      "comparisons",)
        else:
            params[key] = found.pop()
    sweeps: dict[tuple, dict] = {}
    for (d, b, lab), seeds in val.items():
        sweep, rank = groups.split(lab)
        if rank is not None:
            sweeps.setdefault((d, b, sweep), {})[rank] = (
                None if None in seeds.values() else float(np.mean(list(seeds.values()))))
    selected = {}
    for (d, b, sweep), by_rank in sorted(sweeps.items()):
        if None in by_rank.values():
            notes += (f"{d}/{b}: no rank of {sweep} selected (best_val_acc1 missing); name a rank "
                      f"({groups.ranked(sweep, min(by_rank))})",)
            continue
        rank = groups.choose_rank(by_rank)
        selected[(d, b, sweep)] = (rank, by_rank[rank])
        cells[(d, b, sweep)] = cells[(d, b, groups.ranked(sweep, rank))]
        if (d, b, groups.ranked(sweep, rank)) in params:
            params[(d, b, sweep)] = params[(d, b, groups.ranked(sweep, rank))]
    return Table(metric, cells, selected, source, notes, params)


CSV_COLUMNS = ("dataset", "backbone", "method", "rank", "seed")


def read_csv(path: Path, metric: str = "test_acc1") -> list[dict]:
    """Tidy rows from a CSV with columns dataset, backbone, method, rank (empty unless adapter), seed,
    the metric, and optionally best_val_acc1, trainable_params, status and any config field (placement,
    blocks, init, activation, scale, lr, ...: a configuration is every such field but the seed, `groups`)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    missing = [c for c in (*CSV_COLUMNS, metric) if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    out = []
    for line, row in enumerate(rows, start=2):
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        for name, kind in (("seed", int), ("rank", int), (metric, float), ("best_val_acc1", float),
                           ("trainable_params", float)):
            v = row.get(name)
            if v in (None, ""):
                row[name] = None
                continue
            try:
                row[name] = kind(float(v)) if kind is int else kind(v)
            except ValueError:
                raise UserError(f"{path}: line {line}: {name} {v!r} is not a number") from None
        if row["seed"] is None:
            raise UserError(f"{path}: line {line}: no seed")
        row["run"] = f"{path.name} line {line}"
        out.append(row)
    return out


def load_table(source: Path, metric: str = "test_acc1") -> Table:
    """A Table from a folder of run directories or a CSV file (see `read_csv`)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return table_from_rows(read_csv(source, metric), metric, source=None)
    found = runs.discover(source)
    notes = tuple(f"skipped {p}: {why}" for p, why in found.skipped[:20])
    if len(found.skipped) > 20:
        notes += (f"... and {len(found.skipped) - 20} more skipped",)
    return table_from_rows(groups.labelled_rows(found.runs), metric, source=source, notes=notes)


def paired_values(table: Table, pair: tuple[str, str], a: str, b: str,
                  allow_unpaired: bool = False) -> tuple[np.ndarray, np.ndarray, tuple, bool]:
    """(x (n_a,), y (n_b,), seeds, paired): a's and b's values on `pair`, in seed order.

    Raises UserError when the seeds differ, unless allow_unpaired (then Welch etc. are used)."""
    va, vb = table.values(pair, a), table.values(pair, b)
    if set(va) == set(vb):
        seeds = tuple(sorted(va))
        return np.array([va[s] for s in seeds]), np.array([vb[s] for s in seeds]), seeds, True
    if not allow_unpaired:
        only_a, only_b = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
        what = "; ".join(f"{m} lacks seed(s) {', '.join(map(str, s))}" for m, s in ((b, only_a), (a, only_b)) if s)
        raise UserError(f"{pair[0]}/{pair[1]}: missing seeds for a paired test ({what}); "
                        "run them, or pass --allow-unpaired to use Welch")
    return np.array([va[s] for s in sorted(va)]), np.array([vb[s] for s in sorted(vb)]), (), False
