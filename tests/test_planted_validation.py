"""The planted validation's sweeps: the demo's runs where it has them, wider where k* needs it."""

import json

from adaptertune.demo import plan_runs

from conftest import load_benchmark


def test_the_sweeps_are_the_demos_runs_widened_only_where_k_needs_it():
    pv = load_benchmark("planted_validation")
    assert {c.run_id for c in pv.plan(8)} == {c.run_id for c in plan_runs(8)}     # finished demo runs are reused
    assert pv.sweep_ranks(16, 48) == [1, 2, 4, 8, 16, 32, 48]                        # 4k* = 64 > vit_nano's width
    assert pv.sweep_ranks(16, 64) == [1, 2, 4, 8, 16, 32, 64]
    assert pv.sweep_ranks(4, 48, factor=4) == [1, 2, 4, 8, 16]
    wide = pv.plan(16, "vit_micro", "all")
    assert {c.num_classes for c in wide} == {20} and {c.backbone for c in wide} == {"vit_micro"}
    assert sorted({c.rank for c in wide if c.method == "adapter"}) == [1, 2, 4, 8, 16, 32, 64]
    assert {c.blocks for c in wide if c.method == "adapter"} == {"all"}
    assert {c.lr for c in pv.plan(4, lr=0.01) if c.method != "full"} == {0.01}
    assert {c.lr for c in pv.plan(4, lr=0.01) if c.method == "full"} == {c.lr for c in plan_runs(4) if c.method == "full"}


def test_block_variants_share_the_finished_head_and_full_runs(tmp_path):
    pv = load_benchmark("planted_validation")
    last, every = pv.plan(4, blocks="last:1"), pv.plan(4, blocks="all")
    baselines = {c.run_id for c in last if c.method in ("head", "full")}
    assert baselines == {c.run_id for c in every if c.method in ("head", "full")}   # blocks are the adapter's
    done = pv.sweep_dir(tmp_path, "vit_nano", "last:1", 4) / "runs"
    for i, run_id in enumerate(sorted(baselines)):
        (done / run_id).mkdir(parents=True)
        (done / run_id / "summary.json").write_text(json.dumps({"status": "complete" if i else "failed"}))
    target = pv.sweep_dir(tmp_path, "vit_nano", "all", 4) / "runs"
    copied = pv.reuse_baselines(every, target, tmp_path)
    assert sorted(copied) == sorted(baselines)[1:] and all((target / r / "summary.json").exists() for r in copied)
    assert pv.reuse_baselines(every, target, tmp_path) == copied                     # nothing twice, still named


def test_a_sweep_that_cannot_be_analysed_is_one_line_and_exit_1_and_the_others_are_kept(tmp_path, monkeypatch, capsys):
    from adaptertune.errors import UserError

    pv = load_benchmark("planted_validation")
    old = {"backbone": "vit_nano", "blocks": "last:1", "k": 2, "means": {}}
    (tmp_path / "planted_validation.json").write_text(json.dumps([old]))

    def validate(k, *args):  # a second worker's sweep still training: seeds missing for the paired test
        raise UserError("planted/vit_nano: missing seeds for a paired test (adapter-last1 lacks seed(s) 2)")

    monkeypatch.setattr(pv, "validate", validate)
    monkeypatch.setattr(pv, "table", lambda rows: "")
    monkeypatch.setattr(pv, "markdown", lambda rows: "")
    assert pv.main(["--out", str(tmp_path), "--ranks", "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("planted k* = 4, vit_nano, blocks last:1: ") and "rerun" in err[0]
    assert json.loads((tmp_path / "planted_validation.json").read_text()) == [old]   # earlier rows kept


def test_a_sweep_trained_longer_is_its_own_folder_and_row_beside_the_demo_settings_one():
    pv = load_benchmark("planted_validation")
    assert pv.sweep_dir(pv.Path("o"), "vit_nano", "all", 16) == pv.Path("o/vit_nano-all/k16")
    assert pv.sweep_dir(pv.Path("o"), "vit_nano", "all", 16, epochs=24) == pv.Path("o/vit_nano-all/k16-e24")
    assert {c.epochs for c in pv.plan(16, blocks="all", epochs=24)} == {24}
    row = lambda **kw: {"backbone": "vit_nano", "blocks": "all", "k": 16, "lr": None, "epochs": None, **kw}  # noqa: E731
    rows = pv.merged([row(), row(epochs=24, old=True)], [row(epochs=24)])
    assert [r.get("epochs") for r in rows] == [None, 24] and "old" not in rows[1]     # redone in place, the other kept
    assert pv._blocks(rows[1]) == "all, 24 epochs" and pv._blocks(rows[0]) == "all"
