"""The Python face of the toolkit: `load_runs` (a table of runs) and `train` (runs from Python).

    import adaptertune as at
    runs = at.train(dataset="planted", backbone="vit_nano", weights="none", ranks=[1, 2, 4], seeds=[0, 1],
                    out="runs/")             # trains what is not finished yet, returns its rows
    runs = at.load_runs("runs/")             # one row per complete run: config + summary

Imports no torch until `train` is called.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import Config

_SKIP = ("resolved", "env")  # config.json entries that describe the machine, not the configuration


def rows(found) -> list[dict]:
    """One flat dict per run of a `runs.Discovery`: run, path, label, key, every config field (rank: None
    but for the families with a capacity axis: adapter, LoRA, VPT), every summary field (status, test_acc1,
    best_val_acc1, trainable_params, ...)."""
    from .analysis import groups

    labels = groups.labels([r.config for r in found.runs])
    return [{"run": r.id, "path": str(r.path), "label": lab, "key": r.key,
             **{k: v for k, v in r.config.items() if k not in _SKIP}, "rank": r.row()["rank"], **r.summary}
            for r, lab in zip(found.runs, labels)]


def load_runs(path, *, complete_only: bool = True, frame: bool | None = None):
    """The runs under `path` (searched recursively) as a table, one row per run (see `rows`).

    complete_only: leave out runs whose status is not "complete" (diverged, failed, unfinished).
    frame: return a pandas DataFrame (default: when pandas is installed) or a list of dicts.
    Labels name each configuration as every analysis does (`analysis.groups`). Raises UserError
    when `path` is not a folder.
    """
    from . import runs

    return _frame(rows(runs.discover(Path(path), complete_only=complete_only)), frame)


def train(config: Config | None = None, out="runs", *, ranks=None, seeds=None, methods=None, log=print,
          frame: bool | None = None, **fields):
    """Train `config` (a Config, or one built from `fields`: any Config field) into `out/<run-id>/`.

    ranks, seeds, methods: lists (or specs as on the command line, "1..4", "0..2", "adapter,head")
    to sweep instead of the config's own rank, seed and method. Finished runs are skipped,
    interrupted ones resumed, as with `adaptertune train`. Returns the rows (`load_runs`) of the
    planned runs that completed.
    """
    from . import sweep

    base = dataclasses.replace(config, **fields) if config is not None else Config(**fields)
    parse = {"ranks": sweep.parse_ranks, "seeds": sweep.parse_seeds, "methods": sweep.parse_methods}
    given = {"ranks": ranks, "seeds": seeds, "methods": methods}
    spec = {k: parse[k](v) if isinstance(v, str) else (list(v) if v is not None else None) for k, v in given.items()}
    configs = sweep.plan(base, spec["methods"] or [base.method], spec["ranks"] or [base.rank],
                         spec["seeds"] or [base.seed])
    sweep.run_sweep(configs, Path(out), log=log)
    ids = {c.run_id for c in configs}
    return _frame([r for r in load_runs(out, frame=False) if r["run"] in ids], frame)


def _frame(table: list[dict], frame: bool | None):
    """`table` as a pandas DataFrame (frame None: when pandas is installed), or as it is."""
    if frame is False:
        return table
    try:
        import pandas as pd
    except ModuleNotFoundError:
        if frame:
            raise
        return table
    return pd.DataFrame(table)
