"""`adaptertune analyze spectrum RUNS`: the spectrum (spectrum.py) of every run directory with features.

`analyze_runs(runs_dir, out_dir)` takes the final and per-block features of each run, groups runs
into configurations (`groups`), counts the directions seeds share, recommends a rank per sweep from
its highest-rank run (`recommend`) beside the sweep's measured elbow, and writes spectrum.json /
spectrum.csv / spectrum.png beside a table. Pure numpy/scipy; no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import groups
from .recommend import recommend, within_one_doubling
from .spectrum import Spectrum, shared_directions, spectrum
from .tables import markdown_table, output_folder, text_table, write_csv


# -- a sweep of run directories -------------------------------------------------------------------------

_BLOCK = re.compile(r"^frozen\.block(\d+)$")
_TABLE = (("run", "run", "{}"), ("n", "n", "{}"), ("d", "d", "{}"), ("eff.rank", "effective_rank", "{:.2f}"),
          ("rank90", "rank90", "{}"), ("rank95", "rank95", "{}"), ("rank99", "rank99", "{}"),
          ("signif.", "significant", "{}"), ("rec.rank", "recommended_rank", "{}"), ("util.", "utilization", "{:.2f}"))
_BLOCK_TABLE = (("run", "run", "{}"), ("block", "block", "{}"), ("eff.rank", "effective_rank", "{:.2f}"),
                ("rank90", "rank90", "{}"), ("rank95", "rank95", "{}"), ("rank99", "rank99", "{}"),
                ("signif.", "significant", "{}"), ("rec.rank", "recommended_rank", "{}"))
_RANK_TABLE = (("dataset", "dataset", "{}"), ("backbone", "backbone", "{}"), ("configuration", "label", "{}"),
               ("runs", "runs", "{}"),
               ("eff.rank", "effective_rank", "{:.2f}"), ("± sd", "effective_rank_sd", "{:.2f}"),
               ("signif.", "significant", "{}"), ("rec.rank", "recommended_rank", "{:.1f}"),
               ("util.", "utilization", "{:.2f}"))
_SHARED_TABLE = (("group", "group", "{}"), ("seeds", "shared_seeds", "{}"), ("shared", "shared", "{}"),
                 ("top ICCs", "icc_top", "{}"))
_SHARED_TEXT = ("directions whose intraclass correlation across seeds is significantly above 0.5: the seeds agree on "
                "more of the shift along them than they disagree; chosen on half the samples, tested on the other half")
_CSV = ("run", "dataset", "backbone", "method", "rank", "seed", "block", "n", "d", "effective_rank",
        "participation_ratio", "stable_rank", "rank90", "rank95", "rank99", "significant",
        "recommended_rank", "utilization", "noise_sigma", "signal_fraction")


@dataclass(frozen=True, eq=False)
class RunSpectrum:
    """One run's shift spectrum (final features) and, when saved, one per block."""

    row: dict                                   # Run.row() with its "label" (groups.labelled_rows)
    spectrum: Spectrum
    blocks: tuple[tuple[int, Spectrum], ...] = ()

    @property
    def utilization(self) -> float | None:
        """Effective rank / adapter rank (None for runs without an adapter rank)."""
        rank = self.row.get("rank")
        return self.spectrum.effective_rank / rank if rank else None

    def summary(self) -> dict:
        """Flat JSON-safe row (no arrays): config columns and the spectrum's measures."""
        spec = {k: v for k, v in self.spectrum.to_dict().items() if k != "singular_values"}
        return {"run": self.row["run"], **{k: self.row.get(k) for k in ("dataset", "backbone", "method", "rank", "seed")},
                **spec, "utilization": self.utilization}

    def to_dict(self) -> dict:
        return {**self.summary(), "singular_values": [float(v) for v in self.spectrum.singular_values],
                "blocks": [{"block": i, **s.to_dict()} for i, s in self.blocks]}


@dataclass(frozen=True, eq=False)
class SpectrumReport:
    """What `analyze_runs` found: one RunSpectrum per analysable run, the skipped runs and the files written."""

    runs: tuple[RunSpectrum, ...]
    skipped: tuple[tuple[str, str], ...]         # (run, reason)
    out_dir: Path
    options: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    shared: tuple[dict, ...] = ()                # per group of seeds: {"group", "method", "rank", **Shared.to_dict()}
    recommendations: tuple[dict, ...] = ()       # per rank sweep: `recommend.sweep_recommendations`

    def by_rank(self) -> list[dict]:
        """Per configuration with an adapter rank (`groups`: dataset, backbone, config key), across its
        seeds: mean effective rank (and sd), significant (and `no_gap`: how many of its runs count 0 for want
        of a gap, `_NO_GAP`), recommended rank, utilization; in `groups.order`."""
        cells: dict[tuple, list[RunSpectrum]] = {}
        for r in self.runs:
            if r.row.get("rank"):
                cells.setdefault((r.row.get("dataset"), r.row.get("backbone"), r.row["key"]), []).append(r)
        out = []
        for (dataset, backbone, _), members in cells.items():
            erank = np.array([m.spectrum.effective_rank for m in members])
            rank, label = members[0].row["rank"], members[0].row["label"]
            out.append({"dataset": dataset, "backbone": backbone, "method": members[0].row.get("method"),
                        "label": label, "sweep": f"{dataset}/{backbone} {groups.split(label)[0]}",
                        "rank": rank, "runs": len(members),
                        "effective_rank": float(erank.mean()),
                        "effective_rank_sd": float(erank.std(ddof=1)) if len(members) > 1 else 0.0,
                        "significant": float(np.mean([m.spectrum.significant for m in members])),
                        "no_gap": sum(_no_gap(m.summary()) for m in members),
                        "recommended_rank": float(np.mean([m.spectrum.recommended_rank for m in members])),
                        "utilization": float(erank.mean() / rank)})
        return sorted(out, key=lambda b: (str(b["dataset"]), str(b["backbone"]), groups.order(b["label"])))

    def block_rows(self) -> list[dict]:
        return [{"run": r.row["run"], "block": i, **{k: v for k, v in s.to_dict().items() if k != "singular_values"}}
                for r in self.runs for i, s in r.blocks]

    def to_dict(self) -> dict:
        return {"analysis": "spectrum", "options": self.options,
                "runs": [r.to_dict() for r in self.runs], "by_rank": self.by_rank(), "shared": list(self.shared),
                "recommendations": list(self.recommendations),
                "skipped": [{"run": run, "reason": why} for run, why in self.skipped],
                "notes": list(self.notes), "files": [f.name for f in self.files]}

    def footnotes(self) -> list[str]:
        """The footnotes of the marks `_starred` puts on the significant counts of any run or block."""
        rows = [r.summary() for r in self.runs] + self.block_rows()
        return ([_FOOTNOTE] * any(row.get("noise_white") is False for row in rows)
                + [_NO_GAP] * any(_no_gap(row) for row in rows))

    def table(self) -> str:
        """Plain-text tables: one row per run; per block and per rank when there are any."""
        parts = [_text_table(_TABLE, _starred(r.summary() for r in self.runs))]
        blocks, by_rank = self.block_rows(), self.by_rank()
        if blocks:
            parts.append("per block\n" + _text_table(_BLOCK_TABLE, _starred(blocks)))
        if by_rank:
            parts.append("per configuration with an adapter rank (mean over its seeds)\n" + _text_table(_RANK_TABLE, _marked_means(by_rank)))
        if self.shared:
            parts.append(f"directions shared across seeds ({_SHARED_TEXT})\n" + _text_table(_SHARED_TABLE, self.shared))
        if self.recommendations:
            parts.append(f"rank recommendation from one run ({_REC_TEXT})\n" + _text_table(_REC_TABLE, self.recommendations))
        parts += self.footnotes()
        return "\n\n".join(parts)

    def markdown(self) -> str:
        """A Markdown section: heading, method sentence, the tables, figure links relative to out_dir."""
        o = self.options
        lines = ["## Spectrum of the feature shift", "",
                 f"Singular values of ΔH = H_adapted − H_frozen on the evaluation subset"
                 f"{' (centered over samples)' if o.get('center', True) else ''} for {len(self.runs)} run(s). "
                 f"*Significant* directions stand above the noise floor (Marchenko–Pastur edge + Tracy–Widom margin "
                 f"where the noise looks white, else the robust null, starred; α = {o.get('alpha', 0.01):g}); "
                 f"the recommended rank is the fewest of them holding {100 * o.get('energy_target', 0.95):g}% "
                 f"of the above-noise energy; utilization = effective rank / adapter rank.", "",
                 _markdown_table(_TABLE, _starred(r.summary() for r in self.runs)), ""]
        blocks, by_rank = self.block_rows(), self.by_rank()
        if by_rank:
            lines += ["Per configuration with an adapter rank, mean over its seeds:", "", _markdown_table(_RANK_TABLE, _marked_means(by_rank)), ""]
        if self.shared:
            lines += [f"Directions shared across seeds ({_SHARED_TEXT}):", "",
                      _markdown_table(_SHARED_TABLE, self.shared), ""]
        if blocks:
            lines += ["Per block:", "", _markdown_table(_BLOCK_TABLE, _starred(blocks)), ""]
        lines += [line for note in self.footnotes() for line in (note.replace("*", "\\*", 1), "")]
        lines += [f"![{f.stem}]({f.name})" for f in self.files if f.suffix == ".png"]
        if self.notes:
            lines += ["", *[f"Note: {note}" for note in self.notes]]
        if self.skipped:
            lines += ["", "Skipped:", "", *[f"- `{run}`: {why}" for run, why in self.skipped]]
        return "\n".join(lines) + "\n"


def analyze_runs(runs_dir, out_dir, *, alpha: float = 0.01, center: bool = True, energy_target: float = 0.95,
                 plot: bool = True) -> SpectrumReport:
    """Spectra of every complete run with features under `runs_dir`; writes spectrum.json/.csv/.png/.pdf to `out_dir`.

    Runs that are incomplete, unreadable, without features or with unusable features are skipped
    with the reason. Raises UserError if no run can be analysed (naming the first reason).
    """
    from ..runs import discover, write_json

    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    if not 0 < energy_target <= 1:
        raise UserError(f"--energy-target must be in (0, 1], got {energy_target}")
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    found = discover(runs_dir)
    skipped = [(p.name, why) for p, why in found.skipped]
    results, subsets = [], {}
    for run, row in zip(found.runs, groups.labelled_rows(found.runs)):
        try:
            results.append(_run_spectrum(run, row, subsets, alpha=alpha, center=center, energy_target=energy_target))
        except UserError as e:
            skipped.append((run.id, str(e)))
    if not results:
        why = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise UserError(f"{runs_dir}: no run with features to analyse ({len(skipped)} skipped{why})")
    results.sort(key=lambda r: (str(r.row.get("dataset")), str(r.row.get("backbone")), str(r.row.get("method")),
                                r.row.get("rank") or 0, r.row.get("seed") or 0, r.row["run"]))
    notes = tuple(f"{ds}/{bb}: runs evaluated on {len(v)} different sample subsets; their spectra are not comparable"
                  for (ds, bb), v in subsets.items() if len(v) > 1)
    options = {"alpha": alpha, "center": center, "energy_target": energy_target}
    shared = _shared_by_group(found.runs, results, alpha=alpha)

    recs = tuple(sweep_recommendations(found, alpha=alpha, energy_target=energy_target))
    report = SpectrumReport(tuple(results), tuple(skipped), out_dir, options, notes, shared=shared,
                            recommendations=recs)
    figures = _figures(report, out_dir) if plot else []
    report = replace(report, files=(out_dir / "spectrum.json", out_dir / "spectrum.csv", *figures))
    write_json(out_dir / "spectrum.json", report.to_dict())
    write_csv(out_dir / "spectrum.csv", _CSV, _csv_rows(report))
    return report


def _shared_by_group(runs, results, *, alpha: float) -> tuple[dict, ...]:
    """`shared_directions` of the final shift for every configuration (`groups`: dataset, backbone,
    config key) with >= 2 analysed seeds evaluated on the same samples."""
    by_id = {run.id: run for run in runs}
    cells: dict[tuple, list[RunSpectrum]] = {}
    for r in results:
        cells.setdefault((r.row.get("dataset"), r.row.get("backbone"), r.row["key"]), []).append(r)
    out = []
    for (dataset, backbone, _), members in cells.items():
        if len(members) < 2 or not members[0].spectrum.singular_values.any():
            continue
        arrays = [by_id[m.row["run"]].features() for m in members]
        if len({np.asarray(a.get("indices", [])).tobytes() for a in arrays}) > 1:
            continue
        shifts = np.stack([np.subtract(a["adapted"], a["frozen"], dtype=np.float64) for a in arrays])
        result = shared_directions(shifts, alpha=alpha)
        row = members[0].row
        out.append({"group": f"{dataset}/{backbone} {row['label']}", "method": row.get("method"),
                    "rank": row.get("rank"), "key": row["key"], **result.to_dict()})
    return tuple(out)


def _run_spectrum(run, row: dict, subsets: dict, **kw) -> RunSpectrum:
    arrays = run.features()
    missing = [k for k in ("frozen", "adapted") if k not in arrays]
    if missing:
        raise UserError(f"features.safetensors has no {' or '.join(repr(k) for k in missing)}")
    if "indices" in arrays:
        key = (run.config.get("dataset"), run.config.get("backbone"))
        subsets.setdefault(key, set()).add(np.asarray(arrays["indices"]).tobytes())
    final = spectrum(arrays["frozen"], arrays["adapted"], **kw)
    blocks = []
    for name in arrays:
        m = _BLOCK.match(name)
        if m and f"adapted.block{m.group(1)}" in arrays:
            i = int(m.group(1))
            try:
                blocks.append((i, spectrum(arrays[name], arrays[f"adapted.block{i}"], **kw)))
            except UserError as e:
                raise UserError(f"block {i}: {e}") from None
    return RunSpectrum(row, final, tuple(sorted(blocks, key=lambda b: b[0])))


def _figures(report: SpectrumReport, out_dir: Path) -> list[Path]:
    from . import plots

    files = [plots.save(plots.spectrum_figure(report), out_dir / "spectrum.png")]
    series = [{"label": r.row.get("label") or r.row["run"], "rank": r.row.get("rank"), "blocks": [i for i, _ in r.blocks],
               "effective_rank": [s.effective_rank for _, s in r.blocks],
               "significant": [s.significant for _, s in r.blocks]} for r in report.runs if r.blocks]
    if series:
        files.append(plots.save(plots.spectrum_blocks_figure(series), out_dir / "spectrum_blocks.png"))
    return [f for png in files for f in (png, png.with_suffix(".pdf"))]


def _csv_rows(report: SpectrumReport) -> list[dict]:
    """One row per run (final features), then one per run and block."""
    rows = [{**r.summary(), "block": ""} for r in report.runs]
    rows += [{**{k: r.row.get(k) for k in ("run", "dataset", "backbone", "method", "rank", "seed")},
              **{k: v for k, v in s.to_dict().items() if k != "singular_values"}, "block": i, "utilization": None}
             for r in report.runs for i, s in r.blocks]
    return rows


_REC_TABLE = (("group", "group", "{}"), ("from run", "run", "{}"), ("signif.", "significant", "{}"),
              ("null", "noise_null", "{}"), ("read", "recommended_directions", "{}"), ("gain", "gain", "{:.1f}"),
              ("rec.rank", "recommended_rank", "{}"), ("95% CI", "recommended_ci", "{}"),
              ("measured elbow", "measured_elbow", "{:g}"), ("within 2x", "within_one_doubling", "{}"))
_REC_TEXT = ("from the directions above the noise of the sweep's highest-rank run: with a head-only run of the same "
             "configuration, the smallest rank from which every doubling gains < 0.5 points if accuracy follows their "
             "above-noise energy (head-only as rank 0; gain: the run's points over it), else the fewest holding the "
             "energy target; read: the directions the rule read (where the robust null's edge-spacing count is 0 and the "
             "gain >= 0.5, its parallel-analysis count: a shift spread over many comparable directions has no gap); "
             "interval: samples resampled; measured elbow: the doubling rule on the sweep's accuracy means; within 2x: "
             "elbow/2 <= rec.rank <= 2 elbow. The shift is read at the output: with adapters in several blocks it is "
             "the rank they build together, and each block can need less")
_FOOTNOTE = ("* the noise does not look white (Marchenko–Pastur fit, row/column energies or kurtosis): counted under "
             "the robust null (biwhitened; the smaller of a parallel-analysis and an edge-spacing count).")


_NO_GAP = ("† no gap: the robust null's edge-spacing test found none among the directions its parallel analysis "
           "counts (noise_counts in spectrum.json), so the count is 0. The shift spreads over many comparable directions, "
           "or the noise is correlated across features; one run cannot tell which, the seeds' shared directions and the "
           "gain over head-only can (with a gain of 0.5 points or more the recommendation reads the parallel-analysis count). "
           "On a mean over seeds, † says it averages such zeros (no_gap in spectrum.json's by_rank: how many).")


def _no_gap(row: dict) -> bool:
    """Counted 0 under the robust null for want of a gap, though parallel analysis found directions."""
    counts = row.get("noise_counts") or {}
    return row.get("noise_null") == "robust" and counts.get("edge") == 0 < counts.get("permutation", 0)


def _starred(rows) -> list[dict]:
    """The rows with their significant count marked: * not white noise (`_FOOTNOTE`), † no gap (`_NO_GAP`)."""
    marked = []
    for row in rows:
        mark = "*" * (row.get("noise_white") is False) + "†" * _no_gap(row)
        marked.append({**row, "significant": f"{row['significant']}{mark}"} if mark else row)
    return marked


def _marked_means(rows) -> list[dict]:
    """The per-configuration rows with their mean significant count formatted, † where it averages `_no_gap` zeros."""
    return [{**row, "significant": f"{row['significant']:.1f}" + "†" * (row["no_gap"] > 0)} for row in rows]


def _cells(columns, rows) -> tuple[list[str], list[list[str]], str]:
    """(head, rows of strings, alignment) for `columns` (title, key, format) of dict rows; None is "–"."""
    body = [["–" if row.get(key) is None else fmt.format(row.get(key)) for _, key, fmt in columns] for row in rows]
    return [title for title, _, _ in columns], body, "".join("l" if key in _NAMES else "r" for _, key, _ in columns)


_NAMES = ("run", "dataset", "backbone", "label", "group")  # left-aligned columns


def _text_table(columns, rows) -> str:
    return text_table(*_cells(columns, rows))


def _markdown_table(columns, rows) -> str:
    return markdown_table(*_cells(columns, rows))


# -- the command: adaptertune analyze spectrum RUNS ---------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="false-alarm level of the noise-floor test per direction")
    parser.add_argument("--energy-target", type=float, default=0.95,
                        help="recommended rank: fewest significant directions holding this share of the above-noise energy")
    parser.add_argument("--no-center", dest="center", action="store_false",
                        help="analyse the raw shift; by default it is centered over samples (its mean is an "
                             "offset the adapter's bias absorbs)")


def run_command(args) -> int:
    out = output_folder(args)
    report = analyze_runs(args.runs, out, alpha=args.alpha, center=args.center, energy_target=args.energy_target)
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    for run, why in report.skipped:
        print(f"skipped {run}: {why}")
    print("wrote " + ", ".join(str(f) for f in report.files))
    return 0


def sweep_recommendations(found, *, alpha: float = 0.01, energy_target: float = 0.95, n_boot: int = 50) -> list[dict]:
    """Per adapter rank sweep (`capacity.collect`'s sweeps): the recommendation from its highest-rank run
    with features (the first seed) and the sweep's measured elbow (the doubling rule on the rank means).
    With head-only runs of the same configuration (`head_accuracy`) the recommendation uses the run's gain
    over them (`recommend`'s doubling rule), else the energy target."""
    from .capacity import _columns, collect, group_label
    from .capacity_fit import DELTA, means_elbow

    groups, _, _ = collect(found)
    out = []
    for key, members in groups.items():
        top = max(m[0] for m in members)
        runs = sorted((m for m in members if m[0] == top and (m[3].path / "features.safetensors").exists()),
                      key=lambda m: m[1])
        if not runs:
            continue
        arrays = runs[0][3].features()
        if "frozen" not in arrays or "adapted" not in arrays:
            continue
        head = head_accuracy(found.runs, runs[0][3].config)
        gain = None if head is None else runs[0][2] - head
        rec = recommend(arrays["frozen"], arrays["adapted"], alpha=alpha, energy_target=energy_target, n_boot=n_boot,
                        gain=gain, delta=DELTA)
        ranks = np.array([m[0] for m in members], float)
        levels = np.unique(ranks)
        means = np.array([np.mean([m[2] for m in members if m[0] == r]) for r in levels])
        elbow = float(means_elbow(levels, means, DELTA)) if levels.size >= 2 else None
        out.append({"group": group_label(_columns(members, key)), "run": runs[0][3].id, "from_rank": top,
                    "gain": gain, **rec.to_dict(),
                    "measured_elbow": elbow if elbow is None or math.isfinite(elbow) else None,
                    "within_one_doubling": within_one_doubling(rec.rank, elbow)})
    return out


def head_accuracy(runs, config: dict) -> float | None:
    """Test accuracy of the head-only run of `config`'s configuration (the same config key with method "head")
    and seed, else the mean over that configuration's head-only seeds; None when there is none."""
    want = replace(groups.config_of(config), method="head").config_key()
    heads = {r.config.get("seed"): r.summary.get("test_acc1") for r in runs
             if r.config.get("method") == "head" and groups.config_key(r.config) == want}
    heads = {seed: float(acc) for seed, acc in heads.items() if isinstance(acc, (int, float)) and math.isfinite(acc)}
    if not heads:
        return None
    return heads.get(config.get("seed"), float(np.mean(list(heads.values()))))
