"""The one-run rank recommendation and its place beside the sweep's measured elbow in `analyze spectrum`."""

import json
import re

import numpy as np

from adaptertune.analysis.recommend import recommend, within_one_doubling
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
