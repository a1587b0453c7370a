"""The public Python API: `adaptertune.load_runs / train / analysis / plots`.

Analyses on arrays return their frozen dataclasses and write nothing; figure functions return Figures.
"""

import dataclasses
import os
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

import adaptertune as at
from adaptertune import runs

from conftest import write_fake_run


@pytest.fixture
def no_writes(tmp_path, monkeypatch):
    """An empty working directory; any write through the run-directory code fails the test."""
    def refuse(path, write):
        raise AssertionError(f"an analysis wrote {path}")

    monkeypatch.setattr(runs, "atomic_write", refuse)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert not list(work.iterdir()), "files appeared in the working directory"


def _sweep(rng):
    ranks = np.repeat([1, 2, 4, 8, 16], 3)
    seeds = np.tile([0, 1, 2], 5)
    acc = 80 - 10 * ranks.astype(float) ** -1.0 + rng.normal(0, 0.3, ranks.size)
    return ranks, seeds, acc


def _shift(rng, n=120, d=16, k=3):
    frozen = rng.normal(size=(n, d))
    signal = rng.normal(size=(n, k)) @ rng.normal(size=(k, d)) * 3
    return frozen, frozen + signal + 0.05 * rng.normal(size=(n, d))


def test_each_analysis_on_arrays_returns_its_dataclass_and_writes_nothing(no_writes, rng):
    a = at.analysis
    frozen, adapted = _shift(rng)
    spec = a.spectrum(frozen, adapted)
    ranks, seeds, acc = _sweep(rng)
    fit = a.fit_sweep(ranks, seeds, acc, n_boot=50)
    x, y = rng.normal(70, 1, 3), rng.normal(65, 1, 3)
    rows = [{"dataset": "d", "backbone": "b", "method": m, "rank": r, "seed": s, "test_acc1": v,
             "best_val_acc1": v} for m, r, vals in (("adapter", 4, x), ("head", None, y))
            for s, v in enumerate(vals)]
    table = a.table_from_rows(rows)
    claim = a.parse_claims({"claim": [{"id": "c", "kind": "better_all", "a": "adapter", "b": "head"}]})[0]
    results = {
        "Spectrum": spec,
        "NoiseFloor": a.noise_floor(spec.singular_values, 119, 16),
        "Shared": a.shared_directions(np.stack([adapted - frozen, adapted - frozen + 0.01])),
        "SweepFit": fit,
        "SpectrumPrediction": a.predict_from_spectrum(spec.tail_energy, fit.levels, fit.means),
        "Trends": a.trend_tests(ranks, seeds, acc),
        "Comparison": a.compare(x, y, paired=True, rng=rng),
        "Aggregate": a.aggregate([(x, y, True)], ["d/b"], "adapter", "head", rng=rng, n_boot=50),
        "Table": table,
        "SignificanceReport": a.significance(table, [claim], n_boot=50),
        "ClaimResult": a.evaluate_claim(claim, table),
    }
    for name, value in results.items():
        assert type(value).__name__ == name and dataclasses.is_dataclass(value), name
        assert type(value).__dataclass_params__.frozen, name
    assert spec.significant == 3 and results["SignificanceReport"].claims[0].id == "c"


def test_the_modules_named_like_functions_stay_modules():
    from adaptertune.analysis import significance, spectrum, spectrum_runs

    assert callable(spectrum_runs.analyze_runs) and callable(significance.load_table)
    assert spectrum.spectrum(np.eye(4), 2 * np.eye(4)).n == 4


def test_importing_the_api_and_the_analyses_loads_no_torch():
    code = ("import sys, adaptertune as at; at.analysis; at.plots; at.load_runs; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_load_runs_is_one_row_per_complete_run_with_config_and_summary(tmp_path):
    for seed in (0, 1):
        write_fake_run(tmp_path, method="adapter", rank=4, seed=seed, summary={"test_acc1": 70.0 + seed})
    write_fake_run(tmp_path, method="head", seed=0, status="diverged")
    table = at.load_runs(tmp_path)
    assert len(table) == 2 and sorted(table["test_acc1"]) == [70.0, 71.0]
    assert set(table["label"]) == {"adapter-r4"} and set(table["rank"]) == {4} and "lr" in table.columns
    rows = at.load_runs(tmp_path, frame=False, complete_only=False)
    assert isinstance(rows, list) and len(rows) == 3 and {r["status"] for r in rows} == {"complete", "diverged"}


def test_train_runs_a_small_sweep_from_python(tmp_path):
    import adaptertune.train  # noqa: F401  (the module of the same name must not hide the function)

    rows = at.train(dataset="planted", backbone="vit_nano", weights="none", blocks="last:1", epochs=1,
                    train_samples=120, test_samples=60, feature_samples=40, num_classes=4, planted_rank=2, ranks=[1, 2],
                    seeds="0", out=tmp_path, log=lambda *a: None, frame=False)
    assert sorted((r["rank"], r["status"]) for r in rows) == [(1, "complete"), (2, "complete")]
    assert all(0 <= r["test_acc1"] <= 100 for r in rows)


def test_each_figure_function_returns_a_figure(tmp_path, rng):
    frozen, adapted = _shift(rng)
    spec = at.analysis.spectrum(frozen, adapted)
    fit = at.analysis.fit_sweep(*_sweep(rng), n_boot=50)
    x, y = rng.normal(70, 1, 3), rng.normal(65, 1, 3)
    comps = [at.analysis.compare(x, y, paired=True, rng=rng, dataset="d", backbone="b", a="adapter", b="head")]
    for seed in (0, 1):
        write_fake_run(tmp_path, method="head", seed=seed, summary={"test_acc1": 60.0})
    figures = [at.plots.spectrum_figure(spec), at.plots.spectrum_figure({"r4": spec, "r8": spec}),
               at.plots.capacity_figure(fit), at.plots.significance_figure([{**c.to_dict(), "verdict": "x"} for c in comps]),
               at.plots.training_curves_figure(tmp_path),
               at.plots.spectrum_blocks_figure([{"label": "adapter-r4", "rank": 4, "blocks": [0, 1],
                                                 "effective_rank": [1.0, 2.0], "significant": [1, 2]}])]
    assert all(isinstance(f, Figure) for f in figures)


def test_capacity_figure_gives_each_meaning_its_own_colour_and_draws_an_open_interval_as_an_arrow(rng):
    ranks = np.repeat([1, 2, 4, 8], 3)
    seeds = np.tile([0, 1, 2], 4)
    acc = 50 + 1.5 * ranks + rng.normal(0, 0.5, ranks.size)   # rising linearly: the elbow is beyond the search
    fit = at.analysis.fit_sweep(ranks, seeds, acc, n_boot=50)
    assert not np.isfinite(fit.elbow_ci[1])
    ax = at.plots.capacity_figure(fit).axes[0]
    colours = {}
    for line in ax.get_legend().get_lines():
        colours.setdefault(str(line.get_color()), set()).add(line.get_label().split(" ")[0].split(":")[0])
    _, labels = ax.get_legend_handles_labels()
    elbow = [lab for lab in labels if lab.startswith("elbow")]
    assert elbow and any("unbounded" in lab for lab in elbow)
    for meaning in colours.values():  # a colour is one model, or the elbow, or the seeds...
        assert len(meaning - {"seed"}) <= 1 or meaning <= {"elbow", "seed"}, colours
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert arrows, "an unbounded interval is drawn as an arrow"


def test_significance_figure_has_a_verdict_legend_and_a_title(rng):
    x, y = rng.normal(70, 1, 3), rng.normal(65, 1, 3)
    c = at.analysis.compare(x, y, paired=True, rng=rng, dataset="d", backbone="b", a="adapter", b="head")
    ax = at.plots.significance_figure([{**c.to_dict(), "verdict": "significant"}]).axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == ["significant", "not significant", "inconclusive (underpowered)"] and ax.get_title()
