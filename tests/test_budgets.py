"""Families at matched trainable-parameter budgets and the accuracy-vs-parameters Pareto front (budgets.py)."""

import numpy as np
import pytest

from adaptertune.analysis import budgets
from adaptertune.analysis.stattests import UNDERPOWERED, adjust
from adaptertune.analysis.tidy import table_from_rows

# (method, rank, trainable params, test accuracy offset): adapter and LoRA sweeps, three fixed budgets
CONFIGS = [("adapter", 1, 1100, 0.0), ("adapter", 2, 2100, 1.0), ("adapter", 4, 4100, 2.0), ("adapter", 8, 8100, 3.0),
           ("lora", 1, 1500, -1.0), ("lora", 4, 6000, 1.0),
           ("head", None, 100, -5.0), ("full", None, 1_000_000, 4.0), ("bitfit", None, 3000, 0.5)]


def _rows(seeds=(0, 1, 2), configs=CONFIGS, pair=("cifar10", "vit_tiny")):
    return [{"dataset": pair[0], "backbone": pair[1], "method": m, "rank": r, "seed": s, "trainable_params": p,
             "test_acc1": 70 + off + 0.1 * s * (1 + (r or 0)), "best_val_acc1": 60 + off}
            for m, r, p, off in configs for s in seeds]


def test_matching_is_mutual_nearest_in_log_parameters_within_the_factor():
    #                        a: 100  200  400  800        b: 150  1000  5000
    assert budgets.match_budgets([100, 200, 400, 800], [150, 1000, 5000]) == [(1, 0), (3, 1)]
    # 100 and 400 are nearer to b's 150 / 1000 than to nothing, but those prefer 200 and 800; 5000 is 6x from 800
    assert budgets.match_budgets([100, 200, 400, 800], [150, 1000, 5000], factor=1.3) == [(3, 1)]   # 1.25x only
    assert budgets.match_budgets([100, 200, 400, 800], [150, 1000, 5000], factor=1.2) == []
    assert budgets.match_budgets([100], [50, 200]) == [(0, 0)]           # a tie in log distance: the smaller count
    assert budgets.match_budgets([150, 1000, 5000], [100, 200, 400, 800]) == [(0, 1), (1, 3)]  # symmetric
    assert budgets.match_budgets([], [1]) == []


def test_matches_pair_each_family_with_each_other_at_the_nearest_budget():
    table = table_from_rows(_rows())
    found = {(m.a, m.b): (m.params_a, m.params_b) for m in budgets.matches(table)}
    # head (100) and full (1e6) are more than 2x from everything; "adapter" / "lora" (selected ranks) are aliases
    assert found == {("adapter-r1", "lora-r1"): (1100, 1500), ("adapter-r8", "lora-r4"): (8100, 6000),
                     ("adapter-r4", "bitfit"): (4100, 3000), ("bitfit", "lora-r1"): (3000, 1500)}
    assert {("head", "adapter-r1")} & set(found) == set()
    wide = {(m.a, m.b) for m in budgets.matches(table, factor=20)}
    assert ("adapter-r1", "head") in wide and not any("full" in pair for pair in wide)
    with pytest.raises(ValueError):
        budgets.matches(table, factor=0.5)


def test_matched_comparisons_are_paired_over_seeds_corrected_together_and_aggregated_per_family_pair():
    rows = _rows() + _rows(pair=("cifar100", "vit_tiny"))
    result = budgets.compare_matched(table_from_rows(rows), rng=np.random.default_rng(0), n_boot=50)
    assert len(result.comparisons) == 8 and "within a factor of 2" in result.rule
    by = {(c.match.dataset, c.match.a, c.match.b): c.comparison for c in result.comparisons}
    c = by[("cifar10", "adapter-r8", "lora-r4")]
    assert c.paired and c.seeds == (0, 1, 2)
    # per seed s: (70 + 3 + 0.9 s) - (70 + 1 + 0.5 s)
    assert c.mean_diff == pytest.approx(2 + 0.4 * 1)
    raw = [m.comparison.p for m in result.comparisons]
    assert [m.comparison.p_adj for m in result.comparisons] == pytest.approx(list(adjust(raw, "holm")))
    assert all(m.comparison.verdict == UNDERPOWERED for m in result.comparisons)   # 3 seeds: p >= 0.25
    agg = {(a.a, a.b): a for a in result.aggregates}
    assert set(agg) == {("adapter", "lora"), ("adapter", "bitfit"), ("bitfit", "lora")}
    assert agg[("adapter", "lora")].n_pairs == 4 and agg[("adapter", "lora")].wins == 4   # 2 matches x 2 pairs


def test_matches_with_different_seeds_are_left_out_with_a_note():
    rows = [r for r in _rows() if not (r["method"] == "bitfit" and r["seed"] == 2)]
    result = budgets.compare_matched(table_from_rows(rows), rng=np.random.default_rng(0), n_boot=50)
    kept = {(c.match.a, c.match.b) for c in result.comparisons}
    assert kept == {("adapter-r1", "lora-r1"), ("adapter-r8", "lora-r4")}
    assert sum("bitfit" in n and "left out" in n for n in result.notes) == 2


def test_the_pareto_front_is_exactly_the_non_dominated_points():
    #         G    A    C    B    F    D    E
    params = [50, 100, 150, 200, 200, 400, 400]
    acc = [40, 50, 45, 60, 60, 60, 70]
    # C: A has fewer parameters and more accuracy; D: B as accurate with fewer; B and F tie (neither beats the other)
    assert budgets.pareto_front(params, acc).tolist() == [True, True, False, True, True, False, True]
    assert budgets.pareto_front([1], [0]).tolist() == [True]


def test_pareto_points_need_two_families_per_pair():
    overview = [{"dataset": "d", "backbone": "b", "method": m, "trainable_params": p, "test_acc1": a, "sd": 0.1,
                 "n": 3, "trainable_fraction": p / 1e4} for m, p, a in
                (("adapter-r1", 100, 50.0), ("adapter-r4", 400, 60.0), ("lora-r2", 300, 55.0), ("lora-r8", 1200, 58.0))]
    points = budgets.pareto_points(overview)[("d", "b")]
    assert [(p.label, p.family, p.on_front) for p in points] == [
        ("adapter-r1", "adapter", True), ("lora-r2", "lora", True), ("adapter-r4", "adapter", True),
        ("lora-r8", "lora", False)]
    assert budgets.pareto_points([t for t in overview if t["method"].startswith("adapter")]) == {}


def _family_runs(root, families=("adapter", "lora")):
    """Adapter r1, r4 (1000 r + 200 parameters) and LoRA r1, r4 (1500 r), two seeds each (two ranks: no
    capacity fit to wait for)."""
    from conftest import write_fake_run

    acc = {"adapter": lambda r: 60 + 3 * np.log2(r), "lora": lambda r: 62 + 2 * np.log2(r)}
    count = {"adapter": lambda r: 1000 * r + 200, "lora": lambda r: 1500 * r}
    for method in families:
        for r in (1, 4):
            for seed in (0, 1):
                n = count[method](r)
                write_fake_run(root, method=method, rank=r, seed=seed,
                               summary={"test_acc1": acc[method](r) + seed, "best_val_acc1": 50.0 + r,
                                        "trainable_params": n, "trainable_fraction": n / 1e5})
    return root


def test_report_and_paper_show_the_pareto_front_across_families_and_not_for_one(tmp_path):
    from adaptertune.analysis import paper, report

    one = _family_runs(tmp_path / "one", ("adapter",))
    path, results = report.build(one, tmp_path / "one-report", log=lambda *a: None)
    assert "pareto" not in results and "Pareto" not in path.read_text()
    assert not (tmp_path / "one-report" / "pareto.png").exists()
    written = paper.build(one, tmp_path / "one-paper", n_boot=20, log=lambda *a: None)
    assert "pareto" not in {p.stem for p in written.tables} | {p.stem for p in written.figures}

    both = _family_runs(tmp_path / "both")
    path, results = report.build(both, tmp_path / "report", log=lambda *a: None)
    front = {p["label"]: p["on_front"] for p in results["pareto"]}
    # means: adapter r1/r4 60.5/66.5 at 1.2k/4.2k; LoRA 62.5/66.5 at 1.5k/6k: LoRA r4 is no better than
    # adapter r4 with more parameters, every other one is the best at its budget
    assert front == {"adapter-r1": True, "lora-r1": True, "adapter-r4": True, "lora-r4": False}
    text = path.read_text()
    assert "## Accuracy vs trainable parameters" in text and "![accuracy vs trainable parameters](pareto.png)" in text
    assert "| lora | lora-r4 | 6k | 6.00% | 66.50 ± 0.71 |  |" in text
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 0
    written = paper.build(both, tmp_path / "paper", n_boot=20, log=lambda *a: None)
    assert (tmp_path / "paper" / "figures" / "pareto.pdf").read_bytes().startswith(b"%PDF")
    table = (tmp_path / "paper" / "tables" / "pareto.tex").read_text()
    rows = {line.split(" & ")[3]: line for line in table.splitlines() if line.startswith("cifar100 &")}
    assert list(rows) == ["adapter-r1", "lora-r1", "adapter-r4", "lora-r4"]
    assert rows["lora-r4"].endswith(r"& 6,000 & 6.00 & 66.50 $\pm$ 0.71 &  \\")
    assert rows["adapter-r4"].endswith(r"& \textbf{66.50 $\pm$ 0.71} & $\bullet$ \\")
    assert r"\input{tables/pareto}" in (tmp_path / "paper" / "main.tex").read_text()


def test_a_claim_that_a_family_beats_another_at_matched_budgets():
    from adaptertune.analysis.claims import evaluate_claim, parse_claims
    from adaptertune.errors import UserError

    table = table_from_rows(_rows(seeds=range(6)))   # 6 seeds: the one-sided sign-flip test can reach 1/64
    claims = parse_claims({"claim": [{"id": "ad-lora", "kind": "better_matched", "a": "adapter", "b": "lora"},
                                     {"id": "lora-ad", "kind": "better_matched", "a": "lora", "b": "adapter"},
                                     {"id": "bitfit-lora", "kind": "better_matched", "a": "bitfit", "b": "lora",
                                      "factor": 1.5}]})
    won, lost = (evaluate_claim(c, table) for c in claims[:2])
    # adapter-r1 vs lora-r1 (+1 point at every seed) and adapter-r8 vs lora-r4 (+2 + 0.4 s): both matches won
    assert won.verdict == "supported" and [(m["a"], m["b"]) for m in won.details["matches"]] == [
        ("adapter-r1", "lora-r1"), ("adapter-r8", "lora-r4")]
    assert lost.verdict == "not supported" and "0/2 matched budgets" in lost.summary
    with pytest.raises(UserError, match="within 1.5x"):   # bitfit (3000) and lora-r1 (1500) are 2x apart
        evaluate_claim(claims[2], table)
    with pytest.raises(UserError, match="family 'dora' not in the data"):
        evaluate_claim(parse_claims({"claim": [{"id": "x", "kind": "better_matched", "a": "adapter",
                                                "b": "dora"}]})[0], table)
    with pytest.raises(UserError, match="factor' must be at least 1"):
        parse_claims({"claim": [{"id": "x", "kind": "better_matched", "a": "adapter", "b": "lora", "factor": 0.5}]})
