"""`analyze significance`: the table (selection on validation, CSV), the command's outputs, one-line errors.
(The single tests: test_stattests; claims and their error rates: test_claims.)"""

import json

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from adaptertune import cli
from adaptertune.analysis import significance as sig
from conftest import rows, study


# -- helpers -----------------------------------------------------------------------------------------

def claims_file(tmp_path, text, name="claims.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(tmp_path, capsys, *extra):
    code = cli.main(["analyze", "significance", str(tmp_path / "runs"), "--no-plot", "--bootstrap", "200",
                     "--latex", str(tmp_path / "paper" / "claims.tex"), *extra])
    out, err = capsys.readouterr()
    return code, out, err


# -- the table: selection on validation, CSV, errors ------------------------------------------------------

def test_adapter_rank_is_selected_on_validation_never_on_test():
    vals = {("c", "b", "adapter", 4): [70.0, 71.0, 70.5], ("c", "b", "adapter", 8): [80.0, 81.0, 79.0],
            ("c", "b", "head", None): [60.0, 61.0, 60.5]}
    val = {("c", "b", "adapter", 4): 90.0, ("c", "b", "adapter", 8): 85.0}   # r4 is best on validation
    table = sig.table_from_rows(rows(vals, val=val))
    assert table.selected[("c", "b", "adapter")] == (4, 90.0)
    assert table.values(("c", "b"), "adapter") == {0: 70.0, 1: 71.0, 2: 70.5}


def test_csv_table_gives_the_same_report_as_run_directories(make_run, tmp_path):
    study(make_run)
    cols = ["dataset", "backbone", "method", "rank", "seed", "test_acc1", "best_val_acc1", "placement"]
    lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]) for c in cols)
                                for r in sig.runs.discover(tmp_path / "runs").rows()]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    a = sig.analyze_runs(tmp_path / "runs", tmp_path / "a", n_boot=100, plot=False).to_dict()
    b = sig.analyze_runs(tmp_path / "table.csv", tmp_path / "b", n_boot=100, plot=False).to_dict()
    assert a["comparisons"] == b["comparisons"] and a["selected"] == b["selected"]


def test_unreadable_csv_values_and_missing_columns_are_one_line_errors(tmp_path):
    (tmp_path / "t.csv").write_text("dataset,backbone,method,seed,test_acc1\nc,b,head,0,50\n")
    with pytest.raises(sig.UserError, match="missing column.*rank"):
        sig.load_table(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("dataset,backbone,method,rank,seed,test_acc1\nc,b,head,,zero,50\n")
    with pytest.raises(sig.UserError, match="line 2: seed 'zero' is not a number"):
        sig.load_table(tmp_path / "t.csv")


# -- the command ------------------------------------------------------------------------------------------

PAPER_LIKE = """
alpha = 0.05
[[claim]]
id = "beats-head"
text = "Adapters beat the linear probe everywhere."
kind = "better_all"
a = "adapter"
b = "head"
test = "t"

[[claim]]
id = "gain"
kind = "mean_diff"
a = "adapter"
b = "head"
at_least = 5.0
test = "t"
datasets = ["cifar10", "pets"]
backbones = ["deit_tiny", "vit_small"]

[[claim]]
id = "vs-full"
kind = "wins"
a = "adapter"
b = "full"
k = 4
m = 4
test = "t"

[[claim]]
id = "rank"
kind = "monotone"
diminishing = true
"""


def test_command_prints_a_verdict_per_claim_and_writes_json_csv_and_latex(make_run, tmp_path, capsys):
    study(make_run)
    code, out, err = run_cli(tmp_path, capsys, "--claims", str(claims_file(tmp_path, PAPER_LIKE)))
    assert code == 0, err
    assert "[supported] beats-head" in out and "[supported] gain" in out and "[supported] rank" in out
    assert "[supported] vs-full" in out          # adapter is 3 points above full, noise 0.3, t-test
    assert "adapter = per pair, the rank with the highest mean validation accuracy over seeds; on a tie, the smaller rank" in out
    report = json.loads((tmp_path / "runs" / "analysis" / "significance.json").read_text())
    keys = {"dataset", "backbone", "a", "b", "n", "mean_diff", "ci", "p_t", "p_perm", "p_adj", "hedges_g",
            "min_p", "verdict"}
    assert keys <= set(report["comparisons"][0])
    assert len(report["comparisons"]) == 4 * 3                 # 4 pairs x (adapter-full, adapter-head, full-head)
    assert [c["id"] for c in report["claims"]] == ["beats-head", "gain", "vs-full", "rank"]
    assert all({"id", "kind", "verdict", "summary"} <= set(c) for c in report["claims"])
    gain = next(c for c in report["claims"] if c["id"] == "gain")
    assert gain["mean_diff"] == pytest.approx(10 - 4 / 4, abs=0.5) and f"{gain['mean_diff']:+.2f}" in gain["summary"]
    csv_text = (tmp_path / "runs" / "analysis" / "significance.csv").read_text().splitlines()
    assert csv_text[0].startswith("dataset,backbone,a,b,n") and len(csv_text) == 13
    tex = (tmp_path / "paper" / "claims.tex").read_text()
    assert r"\begin{tabular}" in tex and "beats-head" in tex and "supported" in tex and r"\_" not in tex.split("\n")[1]
    beside = json.loads((tmp_path / "paper" / "claims.json").read_text())
    assert [c["verdict"] for c in beside["claims"]] == [c["verdict"] for c in report["claims"]]


def test_three_seeds_make_per_pair_claims_inconclusive_under_the_exact_test(make_run, tmp_path, capsys):
    study(make_run, gain=30.0)
    path = claims_file(tmp_path, '[[claim]]\nid = "x"\nkind = "better_all"\na = "adapter"\nb = "head"\n')
    code, out, _ = run_cli(tmp_path, capsys, "--claims", str(path))
    assert code == 0
    assert "[inconclusive (underpowered)] x" in out and "cannot go below p = 0.125" in out
    assert "inconclusive (underpowered)" in out.split("across pairs")[0]   # the pairwise table too


def test_without_claims_every_method_pair_is_compared_with_the_chosen_correction(make_run, tmp_path, capsys):
    study(make_run, seeds=range(6))
    code, out, _ = run_cli(tmp_path, capsys, "--correction", "fdr_bh")
    assert code == 0 and "across pairs" in out and "fdr_bh correction over 12 comparisons" in out
    report = json.loads((tmp_path / "runs" / "analysis" / "significance.json").read_text())
    raw = [c["p"] for c in report["comparisons"]]
    assert np.allclose([c["p_adj"] for c in report["comparisons"]], multipletests(raw, method="fdr_bh")[1])
    assert {(a["a"], a["b"]) for a in report["aggregates"]} == {("adapter", "full"), ("adapter", "head"),
                                                                  ("full", "head")}
    assert "adapter - head" in (tmp_path / "paper" / "claims.tex").read_text()


def test_forest_plot_is_written(make_run, tmp_path, capsys):
    study(make_run)
    assert cli.main(["analyze", "significance", str(tmp_path / "runs"), "--bootstrap", "50",
                     "--methods", "adapter,head"]) == 0
    assert (tmp_path / "runs" / "analysis" / "significance.png").stat().st_size > 1000


X = '[[claim]]\nid = "x"\n'
AB = 'a = "adapter"\nb = "head"\n'


@pytest.mark.parametrize("text, message", [
    (X + 'kind = "better_all"\na = "adapter"\nb = \n', "not valid TOML"),
    (X + 'kind = "better_al"\n' + AB, "claim 'x': field 'kind' 'better_al'"),
    (X + 'kind = "better_all"\na = "adapter"\n', "claim 'x': kind 'better_all' needs field 'b'"),
    (X + 'kind = "wins"\nk = "ten"\n' + AB, "claim 'x': field 'k' must be an integer"),
    (X + 'kind = "better_all"\nk = 3\n' + AB, "claim 'x': field 'k' does not apply"),
    ('[[claim]]\nkind = "better_all"\n' + AB, "claim #1: missing field 'id'"),
    (X + 'kind = "better_all"\nalpha = 5\n' + AB, "claim 'x': field 'alpha' must be in"),
    (X + 'kind = "better_all"\na = "adapter"\nb = "fulll"\n', "claim 'x': method 'fulll' not in the data"),
    (X + 'kind = "better_all"\ndatasets = ["svhn"]\n' + AB, "claim 'x': dataset 'svhn' not in the data"),
    (X + 'kind = "wins"\nk = 3\nm = 15\n' + AB, "claim 'x': field 'm' is 15 but 4 pairs"),
    (X + 'kind = "monotone"\nranks = [4, 8, 32]\n', "claim 'x': method 'adapter-r32' not in the data"),
    ('clams = 1\n', "unknown top-level key"),
])
def test_bad_claims_are_one_line_errors_naming_the_claim_and_field(make_run, tmp_path, capsys, text, message):
    study(make_run, seeds=(0, 1))
    code, out, err = run_cli(tmp_path, capsys, "--claims", str(claims_file(tmp_path, text)))
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_seeds_are_a_one_line_error_unless_unpaired_is_allowed(make_run, tmp_path, capsys):
    study(make_run, skip={("pets", "vit_small_patch16_224", "head", None, 2)})
    code, _, err = run_cli(tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "pets/vit_small_patch16_224: missing seeds for a paired test (head lacks seed(s) 2)" in err
    code, out, _ = run_cli(tmp_path, capsys, "--allow-unpaired")
    assert code == 0
    report = json.loads((tmp_path / "runs" / "analysis" / "significance.json").read_text())
    unpaired = [c for c in report["comparisons"] if not c["paired"]]
    assert len(unpaired) == 2 and all(c["b"] == "head" for c in unpaired)


def test_ablation_runs_get_their_own_labels_and_their_own_rank_selection():
    base = {"dataset": "c", "backbone": "b", "method": "adapter", "seed": 0, "test_acc1": 70.0}
    table = sig.table_from_rows([
        {**base, "rank": 16, "best_val_acc1": 70.0},
        {**base, "rank": 16, "placement": "attn", "best_val_acc1": 99.0, "test_acc1": 90.0},
        {**base, "rank": 8, "init": "small", "blocks": "every:2", "best_val_acc1": 99.0},
    ])
    assert table.labels() == ["adapter", "adapter-attn", "adapter-every2-small", "adapter-r16", "adapter-r16-attn",
                              "adapter-r8-every2-small"]
    assert table.selected == {("c", "b", "adapter"): (16, 70.0), ("c", "b", "adapter-attn"): (16, 99.0),
                              ("c", "b", "adapter-every2-small"): (8, 99.0)}
    assert table.values(("c", "b"), "adapter-attn") == {0: 90.0}
    with pytest.raises(sig.UserError, match="two runs for c/b/head seed 0"):
        sig.table_from_rows([{**base, "method": "head", "rank": None}] * 2)
