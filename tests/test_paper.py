"""`adaptertune paper RUNS --out DIR`: booktabs tables, PDF figures and a main.tex that inputs them."""

import json
import re

import numpy as np
import pytest

from adaptertune.analysis import paper
from adaptertune.cli import main

from conftest import write_fake_run


@pytest.fixture(scope="module")
def demo_paper(quick_demo_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    assert main(["paper", str(quick_demo_runs), "--out", str(out), "--bootstrap", "50"]) == 0
    return quick_demo_runs, out


def _summaries(runs_dir):
    by_label = {}
    for path in sorted(runs_dir.iterdir()):
        config = json.loads((path / "config.json").read_text())
        summary = json.loads((path / "summary.json").read_text())
        label = config["method"] + (f"-r{config['rank']}" if config["method"] == "adapter" else "")
        by_label.setdefault(label, []).append(summary["test_acc1"])
    return by_label


def test_paper_on_the_quick_demo_writes_each_table_and_figure_and_a_main_that_inputs_them(demo_paper):
    _, out = demo_paper
    for name in ("main", "ranks", "capacity", "claims"):
        text = (out / "tables" / f"{name}.tex").read_text()
        assert r"\toprule" in text and r"\bottomrule" in text and text.count(r"\begin{tabular}") == 1, name
    for name in paper.FIGURES:
        assert (out / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF"), name
    main_tex = (out / "main.tex").read_text()
    inputs = set(re.findall(r"\\input\{tables/([\w-]+)\}", main_tex))
    assert inputs == {p.stem for p in (out / "tables").iterdir()}
    assert set(re.findall(r"figures/(\w+)\.pdf", main_tex)) == set(paper.FIGURES)


def test_main_table_numbers_are_the_run_summaries_means_and_sds_and_the_best_is_bold(demo_paper):
    runs_dir, out = demo_paper
    acc = _summaries(runs_dir)
    row = next(line for line in (out / "tables" / "main.tex").read_text().splitlines() if line.startswith("planted"))
    cells = re.findall(r"(?:\\textbf\{)?([\d.]+) \$\\pm\$ ([\d.]+)", row)
    val = {}
    for path in runs_dir.iterdir():  # the adapter column: the rank with the best mean validation accuracy
        c, s = (json.loads((path / f).read_text()) for f in ("config.json", "summary.json"))
        if c["method"] == "adapter":
            val.setdefault(c["rank"], []).append(s["best_val_acc1"])
    best_val = max(np.mean(v) for v in val.values())
    rank = min(r for r, v in val.items() if np.mean(v) == best_val)
    expected = [acc["head"], acc["full"], acc[f"adapter-r{rank}"]]
    assert [(float(m), float(s)) for m, s in cells] == [
        (round(np.mean(v), 2), round(np.std(v, ddof=1), 2)) for v in expected]
    bold = re.findall(r"\\textbf\{([\d.]+)", row)
    assert bold == [f"{max(np.mean(v) for v in expected):.2f}"]
    assert f"& {rank} &" in row


def test_the_bold_entry_is_the_rows_best_and_ablations_appear_when_runs_vary_them(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        for placement, offset in (("block", 0.0), ("attn", 5.0)):
            for rank in (2, 4, 8):
                write_fake_run(root, method="adapter", rank=rank, seed=seed, placement=placement,
                               summary={"test_acc1": 60 + rank + offset + seed, "best_val_acc1": 60 + rank})
        write_fake_run(root, method="head", seed=seed, summary={"test_acc1": 90.0 + seed, "best_val_acc1": 50.0})
    result = paper.build(root, tmp_path / "paper", n_boot=20, log=lambda *a: None)
    names = {p.stem for p in result.tables}
    assert {"main", "ranks", "ablation-placement", "capacity"} <= names and "ablation-init" not in names
    main_row = next(l for l in (tmp_path / "paper" / "tables" / "main.tex").read_text().splitlines()
                    if l.startswith("cifar"))
    assert re.findall(r"\\textbf\{([^}]*)\}", main_row) == [r"90.50 $\pm$ 0.71"]   # head-only is this row's best
    ablation = (tmp_path / "paper" / "tables" / "ablation-placement.tex").read_text()
    attn = next(l for l in ablation.splitlines() if "& attn &" in l)
    assert re.findall(r"\\textbf\{([^}]*)\}", attn) == [r"73.50 $\pm$ 0.71"]       # r8 + 5 points: its best


def test_paper_of_a_folder_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["paper", str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
