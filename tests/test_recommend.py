"""The one-run rank recommendation and its place beside the sweep's measured elbow in `analyze spectrum`."""

import json
import re

import numpy as np

import pytest

from adaptertune.analysis.recommend import doubling_rank, recommend, within_one_doubling
from adaptertune.analysis.spectrum_runs import analyze_runs
from adaptertune.errors import UserError
from adaptertune.cli import main


def shift(rng, k, n=400, d=32, strength=4.0, noise=1.0):
    """k equally strong directions (strength x the detection limit) plus white noise."""
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((d, k)))[0]
    return strength * noise * ((n - 1) * d) ** 0.25 * u @ v.T + noise * rng.standard_normal((n, d))


def test_recommendation_of_equal_directions_is_their_number_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    frozen = rng.standard_normal((400, 32))
    rec = recommend(frozen, frozen + shift(rng, 3), n_boot=30)
    assert rec.significant == 3 and rec.rank == 3 and rec.null == "white"
    assert rec.interval[0] <= 3 <= rec.interval[1] <= 3
    assert recommend(frozen, frozen + rng.standard_normal((400, 32))).rank == 0   # pure noise: nothing to adapt


def test_doubling_rank_is_the_elbow_rule_on_the_energy_the_ranks_capture():
    # k equal directions: rank k-1 -> k still gains gain/k points, so the rule keeps all k while gain/k >= delta
    assert doubling_rank(np.ones(4), gain=20.0, delta=0.5) == 4
    assert doubling_rank(np.ones(4), gain=0.9, delta=0.5) == 1         # no doubling is worth 0.5 points
    assert doubling_rank(np.ones(8), gain=3.9, delta=0.5) == 7         # 7 -> 8 gains 3.9/8 < 0.5
    assert doubling_rank(np.ones(8), gain=4.0, delta=0.5) == 8         # 7 -> 8 gains 4/8 = 0.5
    # energy halving per direction: the doubling from r gains about gain * 2^-r, kept while >= delta
    halving = 0.5 ** np.arange(12)
    assert doubling_rank(halving, gain=100.0, delta=0.5) == 8          # 7 -> 12 (the end) gains 0.76, 8 -> 12 0.37
    assert doubling_rank(halving[::-1], gain=100.0, delta=0.5) == 8    # order does not matter
    # a weak tail worth less than delta in total never counts; the same tail worth more does
    tail = np.r_[np.ones(3), np.full(20, 0.01)]
    assert doubling_rank(tail, gain=10.0, delta=0.5) == 3
    assert doubling_rank(tail, gain=1000.0, delta=0.5) > 3
    assert doubling_rank(np.zeros(5), gain=10.0) == doubling_rank([], gain=10.0) == 0
    with pytest.raises(UserError):
        doubling_rank([1.0, -1.0], gain=10.0)


def test_recommendation_from_the_gain_over_head_only_keeps_directions_worth_the_points():
    rng = np.random.default_rng(2)
    frozen = rng.standard_normal((400, 32))
    n, d = 400, 32
    u = np.linalg.qr(rng.standard_normal((n, 6)))[0]
    v = np.linalg.qr(rng.standard_normal((d, 6)))[0]
    strength = 8.0 * ((n - 1) * d) ** 0.25 * np.array([1, 1, 1, 1, 0.5, 0.5])   # 4 strong, 2 weak (5.6% each)
    adapted = frozen + (u * strength) @ v.T + rng.standard_normal((n, d))
    energy = recommend(frozen, adapted, energy_target=0.85)
    # shares 0.22 x 4, 0.056 x 2: 3 -> 6 gains gain/3, 4 -> 6 gain/9, 5 -> 6 gain/18 points
    small, large, none = (recommend(frozen, adapted, gain=g) for g in (3.0, 200.0, 0.5))
    assert energy.significant == 6 and energy.rule == "energy" and energy.rank == 4
    assert small.rule == large.rule == "doubling" and (small.rank, large.rank, none.rank) == (4, 6, 1)
    assert small.interval[0] <= 4 <= small.interval[1] and large.interval[0] <= 6 <= large.interval[1]


def spread_shift(rng, n=1000, d=64, m=40, decay=0.93):
    """(frozen, adapted): a shift over m directions whose energies fall smoothly (decay^2 per direction), with
    noise of uneven level across features; the robust null's edge-spacing test finds no gap in it (count 0)
    though parallel analysis counts all it may test."""
    v = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :m]
    frozen = rng.standard_normal((n, d))
    adapted = frozen + (rng.standard_normal((n, m)) * decay ** np.arange(m)) @ v.T
    return frozen, adapted + 0.05 * rng.standard_normal((n, d)) * rng.lognormal(0, 1, d)


def test_recommendation_with_a_gain_reads_a_shift_spread_over_many_comparable_directions():
    frozen, adapted = spread_shift(np.random.default_rng(0))
    rec = recommend(frozen, adapted, gain=16.0, n_boot=10)
    truth = doubling_rank(0.93 ** (2 * np.arange(40)), gain=16.0)                  # 24
    assert rec.null == "robust" and rec.significant == 0 and rec.directions > 0     # the edge test's blind spot
    assert within_one_doubling(rec.rank, truth) and rec.interval[0] <= rec.rank <= rec.interval[1]
    assert recommend(frozen, adapted, gain=0.2).rank == 0           # a gain below delta: nothing worth adapting


def test_spectrum_command_marks_a_count_without_a_gap(make_run, tmp_path, capsys):
    frozen, adapted = spread_shift(np.random.default_rng(0))
    features = {"frozen": frozen.astype(np.float32), "adapted": adapted.astype(np.float32)}
    make_run(method="adapter", rank=64, seed=0, dataset="planted", backbone="vit_micro", features=features,
             summary={"test_acc1": 90.0})
    gap = {"frozen": frozen.astype(np.float32), "adapted": (frozen + 3 * frozen[:, :1]).astype(np.float32)}
    make_run(method="adapter", rank=64, seed=1, dataset="planted", backbone="vit_micro", features=gap,
             summary={"test_acc1": 90.0})
    make_run(method="head", seed=0, dataset="planted", backbone="vit_micro", summary={"test_acc1": 74.0})
    assert main(["analyze", "spectrum", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\s0\*†\s", out) and "† no gap" in out
    report = json.loads((tmp_path / "runs" / "analysis" / "spectrum.json").read_text())
    (cell,) = report["by_rank"]                              # seed 1's shift has a gap: the mean averages one zero
    assert cell["runs"] == 2 and cell["no_gap"] == 1 and re.search(rf"\s{cell['significant']:.1f}†\s", out)
    (rec,) = report["recommendations"]
    assert rec["significant"] == 0 and rec["recommended_directions"] == report["runs"][0]["noise_counts"]["permutation"]
    assert rec["recommended_rank"] > 0
    assert "† no gap" in analyze_runs(tmp_path / "runs", tmp_path / "md").markdown()     # analyze report's section


def test_within_one_doubling():
    assert within_one_doubling(4, 8) and within_one_doubling(16, 8) and not within_one_doubling(3, 8)
    assert within_one_doubling(2, float("inf")) is None and within_one_doubling(None, 4) is None


def test_spectrum_command_prints_the_recommendation_beside_the_measured_elbow(make_run, tmp_path, capsys):
    rng = np.random.default_rng(1)
    frozen = rng.standard_normal((400, 32)).astype(np.float32)
    accuracy = {1: 70.0, 2: 80.0, 4: 80.2, 8: 80.3}          # the doubling rule's elbow on the means: rank 2
    for rank, acc in accuracy.items():
        for seed in (0, 1):
            features = None
            if rank == 8:
                features = {"frozen": frozen, "adapted": (frozen + shift(rng, 2)).astype(np.float32)}
            make_run(method="adapter", rank=rank, seed=seed, dataset="planted", backbone="vit_nano",
                     features=features, summary={"test_acc1": acc + 0.1 * seed})
    assert main(["analyze", "spectrum", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "rank recommendation from one run" in out and "measured elbow" in out
    (rec,) = json.loads((tmp_path / "runs" / "analysis" / "spectrum.json").read_text())["recommendations"]
    assert rec["from_rank"] == 8 and re.search(r"-r8-[0-9a-f]{8}-s0$", rec["run"])
    assert rec["recommended_rank"] == 2 and rec["measured_elbow"] == 2 and rec["within_one_doubling"] is True
    assert rec["recommended_rule"] == "energy" and rec["gain"] is None      # no head-only run: the energy target

    # head-only runs of the same configuration: the run's gain over seed 0's head picks the rank
    for seed, acc in ((0, 60.3), (1, 10.0)):
        make_run(method="head", seed=seed, dataset="planted", backbone="vit_nano", summary={"test_acc1": acc})
    make_run(method="head", seed=0, dataset="planted", backbone="vit_nano", lr=0.123, summary={"test_acc1": 0.0})
    assert main(["analyze", "spectrum", str(tmp_path / "runs")]) == 0
    (rec,) = json.loads((tmp_path / "runs" / "analysis" / "spectrum.json").read_text())["recommendations"]
    assert rec["recommended_rule"] == "doubling" and rec["gain"] == pytest.approx(80.3 - 60.3)
    assert rec["recommended_rank"] == 2 and rec["within_one_doubling"] is True
