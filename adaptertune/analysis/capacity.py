"""Fit the excess-risk capacity model to rank sweeps: accuracy vs adapter rank, its elbow, its tests.

`adaptertune analyze capacity RUNS` (`analyze_runs`): adapter runs are grouped into sweeps, one
configuration across ranks and seeds (`groups.sweep_key`); each sweep is fitted
(`capacity_fit.fit_sweep`: model families, bootstrap intervals, elbow, trend tests — the model
is described there) and, where a spectrum of the task's feature shift exists (full fine-tuning
runs, else the highest-rank adapter runs), compared with the curve that spectrum predicts. Writes
capacity.json / .csv / .png / .pdf beside a table; runs and groups that cannot be used are listed
with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..runs import _plain as plain   # JSON-safe: arrays to lists, NaN/inf to None
from .capacity_fit import SweepFit, fit_sweep, p_text
from .capacity_models import DELTA, HORIZON, SpectrumPrediction, predict_from_spectrum
from . import groups
from .tables import markdown_table, output_folder, text_table, write_csv


# -- run directories -> groups -----------------------------------------------------------------------------

SHOWN = ("dataset", "backbone", "placement", "init", "blocks", "activation", "scale")  # columns of a group


@dataclass(frozen=True, eq=False)
class GroupResult:
    """One (dataset, backbone, adapter configuration) sweep: its fit and the spectrum's prediction."""

    key: dict
    fit: SweepFit
    prediction: SpectrumPrediction | None
    runs: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return group_label(self.key)

    def to_dict(self) -> dict:
        d = self.fit.to_dict()
        pred = self.prediction
        lo, hi = self.fit.elbow_ci
        return plain({**self.key, "label": self.label, **d, "levels": d["ranks"],  # "ranks": the levels, as before
                "predicted_elbow": pred.to_dict()["elbow"] if pred else None,
                "prediction": pred.to_dict() if pred else None,
                "predicted_elbow_in_ci": None if pred is None or not np.isfinite(pred.elbow)
                else bool(lo <= pred.elbow <= hi),
                "runs": list(self.runs), "notes": d["notes"] + list(self.notes)})


def group_label(key: dict) -> str:
    """dataset/backbone/sweep label (`groups`: "adapter", or what differs from the reference, "adapter-attn")."""
    return f"{key.get('dataset')}/{key.get('backbone')}/{key.get('sweep')}"


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


X_AXES = ("rank", "params")  # a family's own capacity axis (rank; VPT: prompt tokens), or trainable parameters
SWEPT = ("adapter", "lora", "vpt")  # the families with a capacity axis (config.METHOD_FIELDS)
AXIS_NAMES = {"rank": "rank", "vpt": "prompt tokens", "params": "trainable params"}  # what a sweep's levels are


def axis_name(method: str, x: str = "rank") -> str:
    """What the levels of a `method` sweep are under `x`: "rank", "prompt tokens" (VPT), "trainable params"."""
    return AXIS_NAMES["params"] if x == "params" else AXIS_NAMES.get(method, AXIS_NAMES["rank"])


def collect(found, x: str = "rank") -> tuple[dict[str, list], list[dict], list[str]]:
    """Runs of each family with a capacity axis grouped by sweep (`groups.sweep_key`: one configuration
    up to the rank): ({sweep key: [(level, seed, acc, run, sweep label)]}, skipped, notes). The level
    is the rank (`x="rank"`) or the run's trainable parameters from summary.json (`x="params"`)."""
    sweeps: dict[str, list] = {}
    skipped = [{"run": p.name, "reason": why} for p, why in found.skipped]
    seen: dict[tuple, str] = {}
    others = {}
    labels = dict(zip((r.path for r in found.runs), groups.labels([r.config for r in found.runs])))
    for run in found.runs:
        method = run.config.get("method")
        if method not in SWEPT:
            others[method] = others.get(method, 0) + 1
            continue
        acc, rank = _number(run.summary.get("test_acc1")), _number(run.config.get("rank"))
        if x == "params":
            rank = _number(run.summary.get("trainable_params"))
        seed = run.config.get("seed")
        if acc is None:
            skipped.append({"run": run.id, "reason": "no numeric test_acc1 in summary.json"})
        elif not 0 <= acc <= 100:
            skipped.append({"run": run.id, "reason": f"test_acc1 {acc:g} is not a percentage in [0, 100]"})
        elif rank is None or rank < 1 or not isinstance(seed, int):
            what = "summary.json lacks trainable_params" if x == "params" else "config.json lacks a rank >= 1"
            skipped.append({"run": run.id, "reason": f"{what} or an integer seed"})
        else:
            key = groups.sweep_key(run.config)
            if (key, rank, seed) in seen:
                skipped.append({"run": run.id, "reason": f"duplicate of {seen[key, rank, seed]} (same {x} and seed)"})
                continue
            seen[key, rank, seed] = run.id
            sweeps.setdefault(key, []).append((rank, seed, acc, run, groups.split(labels[run.path])[0]))
    notes = [f"{n} {m} run(s) are not part of a rank sweep" + (" (no capacity axis)" if m == "bitfit" else "")
             + (" (their features serve the spectrum)" if m == "full" else "")
             for m, n in sorted(others.items(), key=lambda kv: str(kv[0]))]
    return sweeps, skipped, notes


def _columns(members: list, key: str, x: str = "rank") -> dict:
    c = members[0][3].config
    return {**{k: c.get(k) for k in SHOWN}, "sweep": members[0][4], "key": key, "axis": axis_name(c.get("method"), x)}


def group_tail(members: list, runs: list, cache: dict | None = None) -> tuple[np.ndarray | None, str, str | None]:
    """tau/tau(0) (m+1,) averaged over seeds, its source, and why there is none.

    Source: the group's full fine-tuning runs (same dataset and backbone) when they saved features,
    else its highest-rank adapter runs. Each seed's tail is normalised before averaging, so every
    seed's shape weighs the same. `cache` maps run paths to tails already computed.
    """
    from .spectrum import spectrum

    ds, bb = members[0][3].config.get("dataset"), members[0][3].config.get("backbone")
    full = [r for r in runs if r.config.get("method") == "full" and r.config.get("dataset") == ds
            and r.config.get("backbone") == bb and (r.path / "features.safetensors").exists()]
    top = max(m[0] for m in members)
    adapters = [m[3] for m in members if m[0] == top and (m[3].path / "features.safetensors").exists()]
    sources, what = (full, "full fine-tuning") if full else (adapters, f"adapter r={top:g}")
    if not sources:
        return None, "", "no features.safetensors in a full fine-tuning run or the highest-rank adapter runs"
    tails, errors = [], []
    cache = {} if cache is None else cache
    for run in sources:
        try:
            if run.path not in cache:
                f = run.features()
                cache[run.path] = spectrum(f["frozen"], f["adapted"]).tail_energy
            t = cache[run.path]
        except (UserError, KeyError) as e:
            errors.append(f"{run.id}: {e}")
            continue
        if t[0] > 0:
            tails.append(t / t[0])
    if not tails:
        return None, "", "no usable spectrum (" + ("; ".join(errors) or "zero feature shift") + ")"
    m = max(t.size for t in tails)
    tail = np.mean([np.pad(t, (0, m - t.size)) for t in tails], axis=0)
    return tail, f"{what}, {len(tails)} seed(s)", None


@dataclass(frozen=True, eq=False)
class CapacityReport:
    """What `analyze_runs` found: one GroupResult per fitted sweep, what was skipped and why, the files."""

    groups: tuple[GroupResult, ...]
    skipped: tuple[dict, ...]          # {"run": id, "reason"} or {"group": label, "reason"}
    out_dir: Path
    options: dict
    notes: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()

    def to_dict(self) -> dict:
        return {"analysis": "capacity", "options": self.options, "groups": [g.to_dict() for g in self.groups],
                "skipped": list(self.skipped), "notes": list(self.notes), "files": [f.name for f in self.files]}

    def axis(self) -> str:
        """The groups' levels column: their axis ("ranks", "prompt tokens", "trainable params"), or
        "levels" when sweeps of several axes are shown together (each row then names its own)."""
        names = {g.key.get("axis", "rank") for g in self.groups} or {"rank"}
        if len(names) > 1:
            return "levels"
        name = names.pop()
        return "ranks" if name == "rank" else name

    def rows(self) -> list[dict]:
        """One display row per group (strings); the levels column is named by `axis`."""
        out, column = [], self.axis()
        for g in self.groups:
            f, d = g.fit, g.to_dict()
            lo, hi = f.elbow_ci
            levels = ",".join(f"{r:g}" for r in f.levels) + (f" ({g.key.get('axis')})" if column == "levels" else "")
            out.append({
                "group": g.label, column: levels, "seeds": str(f.n_seeds),
                "best": f"{f.best.name} (w={f.best.weight:.2f})",
                "chosen": " ".join(f"{k} {v:.0%}" for k, v in sorted(f.selection.items(), key=lambda kv: -kv[1]) if v),
                "params": ", ".join(f"{k} {_g(v[0])} [{_g(v[1])}, {_g(v[2])}]" for k, v in d["params"].items()),
                "elbow": f"{_g(f.elbow)} [{_g(lo)}, {_g(hi)}]",
                "elbow means": f"{_g(f.elbow_means)} [{_g(f.elbow_means_ci[0])}, {_g(f.elbow_means_ci[1])}]",
                "kneedle": _g(f.kneedle),
                "R2": _g(f.best.r2, 3), "LOO": _g(f.best.loo_rmse, 2), "p_lof": p_text(f.best.lack_of_fit_p),
                "p_mono": p_text(f.trends.monotone_p), "p_dimin": p_text(f.trends.diminishing_p),
                "predicted": _g(g.prediction.elbow) if g.prediction else "-",
            })
        return out

    def table(self) -> str:
        """Plain-text table, then each group's notes and the skipped groups and runs."""
        rows = self.rows()
        lines = [text_table(list(rows[0]), [list(r.values()) for r in rows])] if rows else \
            ["no rank sweep could be fitted"]
        lines += [f"note: {g.label}: {n}" for g in self.groups for n in g.to_dict()["notes"]]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"skipped {s.get('run') or 'group ' + s['group']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)

    def markdown(self) -> str:
        o = self.options
        axes = sorted({g.key.get("axis", "rank") for g in self.groups}) or ["rank"]
        lines = [f"## Capacity: accuracy vs {' / '.join(axes)}", "",
                 f"Each sweep (runs of one configuration but its capacity axis — the rank r, VPT's prompt tokens, or "
                 f"the trainable parameters under --x params — across seeds) is fitted by "
                 f"least squares with every seed as a replicate: a saturating power law A − B·r^−α, an "
                 f"exponential saturation A − B·e^(−r/ρ), a finite-rank shift A − B·max(0, 1 − r/κ) (κ equal "
                 f"directions: the rise stops at κ) and, where a spectrum of the feature shift exists, "
                 f"the spectral model A − a·τ(r)/τ(0) − b·r; the best by AICc is shown (w: Akaike weight). "
                 f"Intervals are 95% residual-bootstrap intervals ({o.get('n_boot')} resamples); the elbow's "
                 f"interval re-selects the family in every resample (chosen: how often each family was). The elbow is "
                 f"the smallest rank from which every doubling gains less than δ = {o.get('delta')} points "
                 f"(searched up to {o.get('horizon'):g}× the largest rank); elbow means: the same rule on the "
                 f"measured means, no curve, with a 95% bootstrap interval (each rank's runs resampled); "
                 f"Kneedle is on log2(rank); p lof: lack-of-fit F-test of the curve against the rank means "
                 f"(seeds' scatter as pure error). "
                 f"p mono: Page's trend test (seeds as blocks); p dimin: one-sided test of a negative "
                 f"quadratic term in log2(rank); predicted: the elbow of the curve predicted from the "
                 f"spectrum (scaled to the end ranks only).", ""]
        rows = self.rows()
        if rows:
            lines.append(markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
        else:
            lines.append("_No rank sweep could be fitted._")
        lines += [""] + [f"![{f.stem}]({f.name})" for f in self.files if f.suffix == ".png"]
        notes = [f"{g.label}: {n}" for g in self.groups for n in g.to_dict()["notes"]] + list(self.notes)
        if notes:
            lines += ["", *[f"- Note: {n}" for n in notes]]
        if self.skipped:
            lines += ["", "Skipped:", "",
                      *[f"- `{s.get('run') or 'group ' + s['group']}`: {s['reason']}" for s in self.skipped]]
        return "\n".join(lines) + "\n"


def _g(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if not np.isfinite(v):
        return "inf" if v > 0 else "-"
    return f"{v:.{digits}g}"


_CSV_GROUP = ["dataset", "backbone", "placement", "init", "blocks", "activation", "scale", "axis", "levels", "n_seeds",
              "n_runs", "elbow", "elbow_lo", "elbow_hi", "kneedle", "kneedle_lo", "kneedle_hi", "kneedle_data",
              "elbow_means", "elbow_means_lo", "elbow_means_hi",
              "monotone_p", "monotone_test", "diminishing_p", "decline_p", "predicted_elbow"]
_CSV_MODEL = ["model", "best", "aicc", "akaike_weight", "r2", "loo_rmse", "lack_of_fit_p"]
_PARAMS = ["A", "B", "alpha", "rho", "kappa", "a", "b"]


_CSV = _CSV_GROUP + _CSV_MODEL + [f"{p}{s}" for p in _PARAMS for s in ("", "_lo", "_hi")]


def _csv_rows(report: CapacityReport) -> list[dict]:
    """One row per group and model; the group's elbow and tests repeat on each of its rows."""
    rows = []
    for g in report.groups:
        d = g.to_dict()
        base = {**{k: d.get(k) for k in _CSV_GROUP}, "levels": ";".join(map(str, d["levels"])),
                "elbow_lo": d["elbow_ci"][0], "elbow_hi": d["elbow_ci"][1],
                "kneedle_lo": d["kneedle_ci"][0], "kneedle_hi": d["kneedle_ci"][1],
                "elbow_means_lo": d["elbow_means_ci"][0], "elbow_means_hi": d["elbow_means_ci"][1]}
        for m in d["models"]:
            row = {**base, "model": m["model"], "best": m["model"] == d["best_model"],
                   **{k: m[k] for k in _CSV_MODEL[2:]}}
            for p, (est, lo, hi) in m["params"].items():
                row.update({p: est, f"{p}_lo": lo, f"{p}_hi": hi})
            rows.append(row)
    return rows


def _figure(report: CapacityReport, path: Path) -> Path:
    from . import plots

    return plots.save(plots.capacity_figure(report), path)


def analyze_runs(runs_dir, out_dir, *, delta: float = DELTA, n_boot: int = 1000, seed: int = 0,
                 interval: str = "residual", horizon: float = HORIZON, plot: bool = True,
                 x: str = "rank") -> CapacityReport:
    """Fit every sweep (adapter, LoRA, VPT) under `runs_dir` against `x` (each family's own capacity axis,
    "rank", or its trainable parameters, "params"); writes capacity.json/.csv/.png/.pdf to `out_dir`.
    The spectrum's prediction is made for adapter rank sweeps only (a rank-r adapter bounds the shift).

    Groups are sorted by dataset and backbone with the default adapter configuration first. Runs and
    groups that cannot be used are listed in `skipped` with the reason. Raises UserError when no
    group can be fitted (naming the first reason).
    """
    from ..runs import discover, write_json

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if x not in X_AXES:
        raise UserError(f"--x {x!r}: choose one of {', '.join(X_AXES)}")
    if delta <= 0 or horizon < 1 or n_boot < 10:
        raise UserError(f"--delta must be > 0 (got {delta:g}), --horizon >= 1 (got {horizon:g}) "
                        f"and --bootstrap >= 10 (got {n_boot})")
    found = discover(runs_dir)
    sweeps, skipped, notes = collect(found, x)
    rng = np.random.default_rng(seed)
    results, tails = [], {}
    columns = {key: _columns(members, key, x) for key, members in sweeps.items()}
    order = sorted(sweeps, key=lambda k: (str(columns[k]["dataset"]), str(columns[k]["backbone"]),
                                          groups.order(columns[k]["sweep"])))
    for key in order:
        members = sorted(sweeps[key], key=lambda m: (m[0], m[1]))
        key_d = columns[key]
        ranks, seeds, acc = (np.array([m[i] for m in members]) for i in range(3))
        if x == "rank" and members[0][3].config.get("method") == "adapter":
            tail, source, why = group_tail(members, found.runs, tails)
        else:
            tail, why = None, "the spectrum predicts adapter rank sweeps only"
        try:
            fit = fit_sweep(ranks, seeds, acc, tail=tail, delta=delta, n_boot=n_boot, interval=interval,
                            horizon=horizon, rng=rng)
        except UserError as e:
            skipped.append({"group": group_label(key_d), "reason": str(e)})
            continue
        extra, pred = [], None
        if tail is None:
            extra.append(f"no spectral model or prediction: {why}")
        else:
            se = np.array([acc[ranks == r].std(ddof=1) / math.sqrt((ranks == r).sum())
                           if (ranks == r).sum() > 1 else np.nan for r in fit.levels])
            pred = predict_from_spectrum(tail, fit.levels, fit.means, se, delta=delta, horizon=horizon,
                                         source=source)
        results.append(GroupResult(key_d, fit, pred, tuple(m[3].id for m in members), tuple(extra)))
    options = {"delta": delta, "n_boot": n_boot, "seed": seed, "interval": interval, "horizon": horizon, "x": x}
    if not results:
        first = next((s for s in skipped if "group" in s), skipped[0] if skipped else None)
        why = f"; e.g. {first.get('group') or first.get('run')}: {first['reason']}" if first else ""
        raise UserError(f"{runs_dir}: no adapter rank sweep could be fitted ({len(skipped)} skipped{why})")
    report = CapacityReport(tuple(results), tuple(skipped), out_dir, options, tuple(notes))
    files = [out_dir / "capacity.json", out_dir / "capacity.csv"]
    if plot:
        png = _figure(report, out_dir / "capacity.png")
        files += [png, png.with_suffix(".pdf")]
    report = replace(report, files=tuple(files))
    write_json(out_dir / "capacity.json", report.to_dict())
    write_csv(out_dir / "capacity.csv", _CSV, _csv_rows(report))
    return report


# -- the command: adaptertune analyze capacity RUNS ----------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--delta", type=float, default=DELTA,
                        help="elbow: the smallest rank from which a doubling gains less than this many points")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--interval", choices=("residual", "seeds"), default="residual",
                        help="bootstrap the residuals around the fit (honest with few seeds) or whole seeds")
    parser.add_argument("--horizon", type=float, default=HORIZON,
                        help="search the elbow up to this multiple of the largest measured rank")
    parser.add_argument("--x", choices=X_AXES, default="rank",
                        help="the capacity axis: each family's own (rank; VPT: prompt tokens) or trainable parameters")


def run_command(args) -> int:
    out = output_folder(args)
    report = analyze_runs(args.runs, out, delta=args.delta, n_boot=args.bootstrap, seed=args.seed,
                          interval=args.interval, horizon=args.horizon, x=args.x)
    print(report.table())
    print("wrote " + ", ".join(str(f) for f in report.files))
    return 0
