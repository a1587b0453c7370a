"""Claims: the verdicts' error rates in simulation, scopes, the shipped paper claims, elbow claims."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from adaptertune.analysis import significance as sig
from adaptertune.analysis.claims import Claim, evaluate_claim, load_claims
from conftest import BACKBONES, DATASETS, rows, study


def claim(**kw):
    return Claim(**{"id": "c", **kw})


# -- simulations: error rates of the verdicts ---------------------------------------------------------------

def _simulate(kind_claim, make_rows, reps, seed=0, **kw):
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(reps):
        table = sig.table_from_rows(make_rows(rng))
        verdicts.append(evaluate_claim(kind_claim, table, n_boot=20, **kw).verdict)
    return verdicts


def _pairs_rows(rng, m, n, effect, sd_pair=3.0, noise=1.0, x0=0.0):
    """m pairs x n seeds of methods a and b with a - b = x0 + effect + pair- and seed-level noise."""
    out = {}
    for i in range(m):
        base = 70 + rng.normal(0, 5)
        pair_shift = x0 + effect + rng.normal(0, sd_pair)
        b = base + rng.normal(0, noise, n)
        out[(f"d{i}", "vit", "head", None)] = b
        out[(f"d{i}", "vit", "full", None)] = b + pair_shift + rng.normal(0, noise, n)
    return rows(out)


ALPHA, TOL, REPS = 0.05, 0.03, 300


@pytest.mark.parametrize("name, c, kw, make", [
    ("better_all (t)", claim(kind="better_all", a="full", b="head", test="t"), {},
     lambda r: _pairs_rows(r, 1, 3, 0.0, sd_pair=0.0)),
    ("mean_diff (perm)", claim(kind="mean_diff", a="full", b="head", at_least=2.0), {},
     lambda r: _pairs_rows(r, 6, 3, 0.0, x0=2.0)),
    ("mean_diff (t, interval)", claim(kind="mean_diff", a="full", b="head", at_least=-1.0, at_most=1.0, test="t"), {},
     lambda r: _pairs_rows(r, 5, 3, 0.0, x0=1.0, sd_pair=0.5)),
    ("wins (t, holm)", claim(kind="wins", a="full", b="head", k=1, test="t"), {},
     lambda r: _pairs_rows(r, 4, 3, 0.0, sd_pair=0.0)),
])
def test_false_positive_rate_under_a_true_null_stays_at_alpha(name, c, kw, make, monkeypatch):
    monkeypatch.setattr("gc.collect", lambda *a: 0)  # statsmodels' Holm calls gc.collect(): 0.1 s a call here
    verdicts = _simulate(c, make, REPS, **kw)
    rate = np.mean([v == "supported" for v in verdicts])
    assert rate <= ALPHA + TOL, (name, rate)
    assert not any(v.startswith("inconclusive") for v in verdicts)


def _rank_rows(rng, m, n, slope, curvature=0.0):
    """m pairs x n seeds at ranks 4..32: accuracy = slope * log2 r - curvature * (log2 r)^2 + noise."""
    out = {}
    for i in range(m):
        base = 70 + rng.normal(0, 5)
        for r in (4, 8, 16, 32):
            x = math.log2(r)
            out[(f"d{i}", "vit", "adapter", r)] = base + slope * x - curvature * x * x + rng.normal(0, 1.0, n)
    return rows(out)


def test_monotone_claim_holds_its_error_rate_and_finds_a_real_trend():
    trend = claim(kind="monotone")
    null = _simulate(trend, lambda r: _rank_rows(r, 2, 3, 0.0), REPS)
    assert np.mean([v == "supported" for v in null]) <= ALPHA + TOL
    concave = claim(kind="monotone", diminishing=True)
    linear = _simulate(concave, lambda r: _rank_rows(r, 4, 3, 2.0), 200, seed=1)  # rising, but not diminishing
    assert np.mean([v == "supported" for v in linear]) <= ALPHA + TOL
    strong = _simulate(concave, lambda r: _rank_rows(r, 4, 3, 12.0, curvature=1.5), 20, seed=2)
    assert strong.count("supported") == 20


@pytest.mark.parametrize("c, make", [
    (claim(kind="better_all", a="full", b="head"), lambda r: _pairs_rows(r, 5, 6, 8.0, sd_pair=1.0)),
    (claim(kind="mean_diff", a="full", b="head", at_least=2.0), lambda r: _pairs_rows(r, 8, 3, 12.0)),
    (claim(kind="wins", a="full", b="head", k=4, m=5, test="t"), lambda r: _pairs_rows(r, 5, 3, 8.0, sd_pair=1.0)),
])
def test_a_large_true_effect_is_supported(c, make, monkeypatch):
    monkeypatch.setattr("gc.collect", lambda *a: 0)
    assert _simulate(c, make, 20, seed=3) == ["supported"] * 20


def test_claim_scope_restricts_to_named_pairs_and_resolves_backbone_shorthand():
    vals = {("cifar10", "vit_small_patch16_224", "full", None): [80.0, 81.0, 82.0],
            ("cifar10", "vit_small_patch16_224", "head", None): [70.0, 70.5, 71.0],
            ("svhn", "vit_small_patch16_224", "full", None): [60.0, 61.0, 62.0],
            ("svhn", "vit_small_patch16_224", "head", None): [70.0, 70.5, 71.0]}
    table = sig.table_from_rows(rows(vals))
    c = claim(kind="better_all", a="full", b="head", test="t", datasets=("cifar10",), backbones=("vit_small",))
    r = evaluate_claim(c, table)
    assert r.verdict == "supported" and [p["dataset"] for p in r.details["pairs"]] == ["cifar10"]
    assert evaluate_claim(replace(c, datasets=None), table).verdict == "not supported"


def test_shipped_paper_claims_parse_and_name_the_core_suite():
    claims = load_claims(Path(__file__).parents[1] / "analysis" / "paper_claims.toml")
    by_id = {c.id: c for c in claims}
    assert {c.kind for c in claims} >= {"better_all", "mean_diff", "wins", "monotone"}
    gain = next(c for c in claims if c.kind == "mean_diff")
    assert gain.at_least < 14.9 < gain.at_most and len(gain.datasets) * len(gain.backbones) == 15
    wins = next(c for c in claims if c.kind == "wins")
    assert (wins.k, wins.m, wins.a, wins.b) == (10, 15, "adapter", "full")
    assert all(c.alpha == 0.05 and c.correction == "holm" for c in by_id.values())


def test_elbow_claim_reads_the_capacity_reports_intervals(make_run, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from adaptertune.analysis import capacity

    study(make_run, seeds=(0, 1))
    groups = [{"dataset": d, "backbone": b, "sweep": "adapter", "elbow": 8.0, "elbow_ci": [6.0, 12.0]} for d in DATASETS for b in BACKBONES]
    calls = []

    def fake(runs_dir, out_dir, **options):
        calls.append(runs_dir)
        return SimpleNamespace(to_dict=lambda: {"groups": groups})

    monkeypatch.setattr(capacity, "analyze_runs", fake, raising=False)
    table = sig.load_table(tmp_path / "runs")
    kw = dict(runs_dir=tmp_path / "runs", out_dir=tmp_path / "out")
    assert evaluate_claim(claim(kind="elbow", at_most=16.0), table, **kw).verdict == "supported"
    assert calls == [tmp_path / "runs"]
    below = evaluate_claim(claim(kind="elbow", at_most=10.0), table, **kw)
    assert below.verdict == "not supported" and "at or below rank 10 on 0/4 pairs" in below.summary
    groups[0]["elbow_ci"] = [6.0, None]                          # beyond the search horizon: unbounded
    unbounded = evaluate_claim(claim(kind="elbow", at_most=16.0), table, **kw)
    assert unbounded.verdict == "not supported" and "3/4" in unbounded.summary
    del groups[0]
    assert evaluate_claim(claim(kind="elbow", at_most=16.0), table, **kw).verdict == "inconclusive"
    with pytest.raises(sig.UserError, match="elbow claims need run directories"):
        evaluate_claim(claim(kind="elbow", at_most=16.0), table)


def test_elbow_claim_against_the_real_capacity_fit(make_run, tmp_path):
    rng = np.random.default_rng(0)
    for r in (2, 4, 8, 16, 32, 64):
        for s in range(3):  # gain per doubling 4 / r points: below the 0.5-point threshold from r = 8 on
            make_run(dataset="cifar10", backbone="vit_small_patch16_224", method="adapter", rank=r, seed=s,
                     summary={"test_acc1": 90 - 8 / r + rng.normal(0, 0.05), "best_val_acc1": 90.0})
    table = sig.load_table(tmp_path / "runs")
    kw = dict(runs_dir=tmp_path / "runs", out_dir=tmp_path / "out")
    low = evaluate_claim(claim(kind="elbow", at_most=32.0), table, **kw)
    assert low.verdict == "supported", low.summary
    assert 4 <= low.details["pairs"][0]["elbow"] <= 16
    assert evaluate_claim(claim(kind="elbow", at_most=2.0), table, **kw).verdict == "not supported"
    assert not (tmp_path / "out").exists()  # the capacity fit's files are not written as a side effect
