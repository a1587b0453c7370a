"""One definition of "the same configuration" (analysis/groups.py) in every analysis and the report.

A mixed folder, written directly as run directories: two datasets; per dataset a reference sweep
(seeds 0-2), an `attn` placement sweep (seeds 0-1: overlapping) and an identity x0.1 sweep
(seeds 3-5: disjoint), ranks 2, 4, 8, and head-only runs. Every configuration has its own
accuracy level, validation curve and shift rank, so pooling two of them shows in every number.
"""

from pathlib import Path

import numpy as np
import pytest

from adaptertune import runs
from adaptertune.analysis import capacity, groups, report, significance, spectrum_runs
from adaptertune.analysis.claims import Claim, evaluate_claim
from adaptertune.config import Config
from adaptertune.demo import headline

from conftest import load_benchmark, write_fake_run

BB = "vit_small_patch16_224"
BASE = {"cifar10": 90.0, "cifar100": 70.0}
# sweep label -> (config fields, seeds, accuracy offset, shift rank of its features)
SWEEPS = {"adapter": ({}, (0, 1, 2), 0.0, 1),
          "adapter-attn": ({"placement": "attn"}, (0, 1), -5.0, 2),
          "adapter-identity-x0.1": ({"activation": "identity", "scale": 0.1}, (3, 4, 5), -10.0, 3)}
RANKS = (2, 4, 8)
N, D = 96, 12


def _shift(rng, k):
    u = np.linalg.qr(rng.standard_normal((N, k)))[0]
    v = np.linalg.qr(rng.standard_normal((D, k)))[0]
    return (u * np.linspace(40, 20, k)) @ v.T + 0.05 * rng.standard_normal((N, D))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(folder, {(dataset, label): {seed: test_acc1}})"""
    root = tmp_path_factory.mktemp("mixed") / "runs"
    rng = np.random.default_rng(0)
    written = {}
    for dataset, base in BASE.items():
        frozen = rng.standard_normal((N, D)).astype(np.float32)
        for sweep, (fields, seeds, offset, k) in SWEEPS.items():
            for rank in RANKS:
                for seed in seeds:
                    acc = base + offset - 8 / rank + rng.normal(0, 0.1)
                    # validation prefers r8 in the GELU sweeps, r2 in the identity sweep
                    val = 95 - rank if fields.get("activation") == "identity" else 80 + rank
                    feats = {"frozen": frozen, "adapted": (frozen + _shift(rng, k)).astype(np.float32),
                             "indices": np.arange(N)}
                    write_fake_run(root, dataset=dataset, backbone=BB, method="adapter", rank=rank, seed=seed,
                                   features=feats, summary={"test_acc1": acc, "best_val_acc1": float(val),
                                                            "trainable_fraction": 0.01 * rank}, **fields)
                    written.setdefault((dataset, groups.ranked(sweep, rank)), {})[seed] = acc
        for seed in (0, 1, 2):
            acc = base - 20 + rng.normal(0, 0.1)
            write_fake_run(root, dataset=dataset, backbone=BB, method="head", seed=seed,
                           summary={"test_acc1": acc, "best_val_acc1": 50.0})
            written.setdefault((dataset, "head"), {})[seed] = acc
    return root, written


def _seeds(label: str) -> tuple:
    return (0, 1, 2) if label == "head" else SWEEPS[groups.split(label)[0]][1]


def test_labels_name_what_differs_and_one_label_is_one_config_key(mixed):
    root, written = mixed
    rows = groups.labelled_rows(runs.discover(root).runs)
    assert {(r["dataset"], r["label"]) for r in rows} == set(written)
    by_label = {}
    for r in rows:
        by_label.setdefault((r["dataset"], r["label"]), set()).add(r["key"])
        assert r["key"] == Config.from_dict(runs.read_run(Path(r["path"])).config).config_key()
    assert all(len(keys) == 1 for keys in by_label.values())
    assert len({k for keys in by_label.values() for k in keys}) == len(by_label)
    # other identity fields appear when they vary within a method, unless at the reference value
    assert groups.labels([{"method": "head", "lr": 0.03}, {"method": "head"}, {"method": "adapter", "rank": 4}]) \
        == ["head-lr=0.03", "head", "adapter-r4"]
    close = [{"method": "adapter", "rank": 4, "scale": v} for v in (0.1, 0.1000001)]  # both print as x0.1
    assert groups.labels(close) == [f"adapter-r4-x0.1-{groups.config_key(c)}" for c in close]


def test_labels_sort_ranks_as_numbers():
    labels = ["head", "adapter-r16", "full", "adapter-r2", "adapter-r32", "adapter-r1-attn", "adapter-r4",
              "adapter-r1", "adapter", "adapter-r8"]
    assert sorted(labels, key=groups.order) == ["adapter", "adapter-r1", "adapter-r2", "adapter-r4", "adapter-r8",
                                                "adapter-r16", "adapter-r32", "adapter-r1-attn", "full", "head"]


def test_report_overview_has_one_row_per_configuration(mixed):
    root, written = mixed
    table = report.overview(groups.labelled_rows(runs.discover(root).runs))
    assert len(table) == len(written) == 20
    for t in table:
        accs = written[(t["dataset"], t["method"])]
        assert t["seeds"] == sorted(accs) == list(_seeds(t["method"]))
        assert t["test_acc1"] == pytest.approx(np.mean(list(accs.values())))
        assert t["trainable_fraction"] == (None if t["rank"] is None else pytest.approx(0.01 * t["rank"]))
    assert [t["method"] for t in table if t["dataset"] == "cifar10"] == [
        "adapter-r2", "adapter-r4", "adapter-r8", "adapter-r2-attn", "adapter-r4-attn", "adapter-r8-attn",
        "adapter-r2-identity-x0.1", "adapter-r4-identity-x0.1", "adapter-r8-identity-x0.1", "head"]
    chosen = {(t["dataset"], t["method"]) for t in table if t["chosen"]}
    assert chosen == {(d, lab) for d in BASE for lab in ("adapter-r8", "adapter-r8-attn", "adapter-r2-identity-x0.1")}


def test_spectrum_averages_and_shares_only_within_a_configuration(mixed, tmp_path):
    root, written = mixed
    result = spectrum_runs.analyze_runs(root, tmp_path, plot=False)
    per_run = {(r.row["dataset"], r.row["label"], r.row["seed"]): r.spectrum for r in result.runs}
    rows = result.by_rank()
    assert len(rows) == 18 and {(b["dataset"], b["label"]) for b in rows} == {k for k in written if k[1] != "head"}
    for b in rows:
        own = [per_run[(b["dataset"], b["label"], s)] for s in _seeds(b["label"])]
        assert b["runs"] == len(own)
        assert b["effective_rank"] == pytest.approx(np.mean([s.effective_rank for s in own]))
        assert b["significant"] == pytest.approx(np.mean([s.significant for s in own]))
    shared = {g["group"]: g for g in result.shared}
    assert len(shared) == 18
    for d, lab in (k for k in written if k[1] != "head"):
        assert shared[f"{d}/{BB} {lab}"]["shared_seeds"] == len(_seeds(lab))


def test_capacity_fits_one_sweep_per_configuration(mixed, tmp_path):
    root, written = mixed
    result = capacity.analyze_runs(root, tmp_path, n_boot=50, plot=False)
    assert [g.label for g in result.groups] == [f"{d}/{BB}/{s}" for d in BASE for s in SWEEPS]
    for g in result.groups:
        sweep, seeds = g.key["sweep"], SWEEPS[g.key["sweep"]][1]
        assert g.fit.n_seeds == len(seeds)
        expected = {Config(dataset=g.key["dataset"], backbone=BB, rank=r, seed=s, **SWEEPS[sweep][0]).run_id
                    for r in RANKS for s in seeds}
        assert set(g.runs) == expected
        means = [np.mean([written[(g.key["dataset"], groups.ranked(sweep, r))][s] for s in seeds]) for r in RANKS]
        assert np.allclose(g.fit.means, means)


def test_significance_cells_hold_the_seeds_of_one_configuration(mixed, tmp_path):
    root, written = mixed
    table = significance.load_table(root)
    for (d, lab), accs in written.items():
        assert table.values((d, BB), lab) == pytest.approx(accs)
    assert max(len(v) for v in table.cells.values()) == 3   # GELU and identity x0.1 are never one 6-seed cell
    pair = ("cifar10", BB)
    assert table.selected[(*pair, "adapter")][0] == 8
    assert table.selected[(*pair, "adapter-identity-x0.1")][0] == 2   # chosen on its own validation curve
    with pytest.raises(significance.UserError, match="missing seeds for a paired test"):
        significance.paired_values(table, pair, "adapter-r4-attn", "adapter-r4")  # no seed borrowed from another
    result = significance.analyze(table, n_boot=200)
    assert [(c.dataset, c.a, c.b, c.n, c.paired) for c in result.comparisons] == [
        (d, "adapter", "head", 3, True) for d in BASE]
    assert result.comparisons[0].mean_a == pytest.approx(np.mean(list(written[("cifar10", "adapter-r8")].values())))


def test_claims_read_the_reference_sweep_only(mixed, tmp_path):
    root, _ = mixed
    table = significance.load_table(root)
    trend = evaluate_claim(Claim(id="t", kind="monotone"), table)
    assert trend.details["ranks"] == list(RANKS) and trend.details["blocks"] == 2 * 3  # pairs x its 3 seeds
    fits = {(g.key["dataset"], g.key["sweep"]): g.fit
            for g in capacity.analyze_runs(root, tmp_path / "cap", n_boot=50, plot=False).groups}
    elbow = evaluate_claim(Claim(id="e", kind="elbow", at_most=64.0), table, runs_dir=root)
    for p in elbow.details["pairs"]:
        assert p["elbow"] == pytest.approx(fits[(p["dataset"], "adapter")].elbow)


def test_report_builds_every_section_on_the_mixed_folder(mixed, tmp_path, monkeypatch):
    from adaptertune.analysis import plots

    monkeypatch.setattr(plots, "save", lambda fig, path: (plots.plt.close(fig), Path(path))[1])  # drawn, not rendered
    root, _ = mixed
    path, results = report.build(root, tmp_path, log=lambda *a: None)
    assert all("error" not in results[name] for name in report.SECTIONS), results
    md = path.read_text()
    assert "| adapter-r2-identity-x0.1 *" in md and "| adapter-r8-attn * |" in md


# -- a tie on validation: every chooser takes the smaller rank -------------------------------------------

def test_a_tie_on_validation_goes_to_the_smaller_rank_everywhere(make_run, tmp_path):
    common = dict(dataset="planted", backbone="vit_nano", blocks="last:1")  # the demo's sweep
    val = {2: 70.0, 4: 75.0, 8: 80.0, 16: 80.0}                           # r8 and r16 tie; "r16" < "r8" as text
    for seed in (0, 1, 2):
        for rank, v in val.items():
            make_run(method="adapter", rank=rank, seed=seed, summary={"test_acc1": 60.0 + rank + seed,
                                                                      "best_val_acc1": v}, **common)
        make_run(method="head", seed=seed, summary={"test_acc1": 50.0 + seed, "best_val_acc1": 50.0}, **common)
    root = tmp_path / "runs"
    assert groups.choose_rank(val) == 8
    table = report.overview(groups.labelled_rows(runs.discover(root).runs))
    assert [t["method"] for t in table if t["chosen"]] == ["adapter-r8-last1"]
    line = next(x for x in headline({"overview": table}, 4) if x.startswith("test acc1"))
    assert "adapter-r8-last1, chosen on val) 69.00" in line and "head 51.00" in line
    assert significance.load_table(root).selected == {("planted", "vit_nano", "adapter-last1"): (8, 80.0)}
    rank, x, y = load_benchmark("planted_validation").adapter_vs_head(root)
    assert rank == 8 and list(x) == [68.0, 69.0, 70.0] and list(y) == [50.0, 51.0, 52.0]
