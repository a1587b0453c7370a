"""The PEFT families on the same runner: LoRA (PEFT's and our q/k/v split), BitFit, VPT, adapter presets."""

import json
import re

import pytest
import torch

import adaptertune
from adaptertune import data
from adaptertune.adapters import adapter_params
from adaptertune.backbones import build_model, create_backbone
from adaptertune.cli import base_config, main, parser
from adaptertune.config import Config
from adaptertune.errors import UserError
from adaptertune.peft_methods import disabled, lora_config, merge

peft = pytest.importorskip("peft")  # in the dev extra


def _plain_id(run_id: str) -> str:
    """A run id without its config key (`-{8 hex}` before `-s{seed}`)."""
    return re.sub(r"-[0-9a-f]{8}(-s\d+)$", r"\1", run_id)


def _run(root, name: str):
    """The run directory `synthetic-vit_nano-{name}-<config key>-s0` under `root`."""
    found = [p for p in root.iterdir() if _plain_id(p.name) == f"synthetic-vit_nano-{name}-s0"]
    assert len(found) == 1, (name, found)
    return found[0]

D, DEPTH, C, R = 48, 3, 5, 4  # vit_nano: embed dim, blocks; classes; rank / prompt tokens
HEAD = D * C + C
FAMILIES = {  # name: (Config fields, trainable parameters by hand)
    "lora-qv": (dict(method="lora"), DEPTH * 2 * R * (D + D) + HEAD),  # q and v thirds: d -> d each
    "lora-linears": (dict(method="lora", lora_targets="qkv,proj,fc1,fc2"),
                     DEPTH * R * ((D + 3 * D) + (D + D) + (D + 4 * D) + (4 * D + D)) + HEAD),
    "lora-mixed": (dict(method="lora", lora_targets="k,fc2", blocks="last:2"), 2 * R * ((D + D) + (4 * D + D)) + HEAD),
    # every bias: per block norm1, qkv (3d), proj, norm2, fc1 (4d), fc2 = 11d; patch embedding, final norm
    "bitfit": (dict(method="bitfit"), DEPTH * 11 * D + D + D + HEAD),
    "vpt-shallow": (dict(method="vpt"), R * D + HEAD),
    "vpt-deep": (dict(method="vpt", vpt_mode="deep"), DEPTH * R * D + HEAD),
    "adapter-plus": (dict(method="adapter", placement="mlp", adapter_scaling="channel", init="houlsby"),
                     DEPTH * adapter_params(D, R, "channel") + HEAD),
    "houlsby": (dict(method="adapter", placement="attn+mlp", init="houlsby"), DEPTH * 2 * (R * (2 * D + 1) + D) + HEAD),
}


def build(**fields):
    torch.manual_seed(0)
    model, counts = build_model(Config(backbone="vit_nano", weights="none", rank=R, **fields).validate(), C)
    return model.eval(), counts


@pytest.fixture(scope="module")
def frozen():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model, _ = build(method="head")
    with torch.no_grad():
        return x, model(x)


@pytest.mark.parametrize("family", FAMILIES)
def test_count_gradients_and_start(family, frozen):
    fields, expected = FAMILIES[family]
    model, counts = build(**fields)
    assert counts["trainable_params"] == expected
    x, logits = frozen
    with torch.no_grad():
        start = model(x)
        with disabled(model):
            off = model(x)
    assert torch.equal(off, logits)  # disabled: the frozen backbone, to the last bit
    if family.startswith("vpt") or fields.get("init") == "houlsby":
        assert not torch.allclose(start, logits)  # prompts / near-identity init: NOT the backbone at init
    else:
        assert torch.equal(start, logits)  # zero B (LoRA), nothing added (BitFit)
    model.train()
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert sum(p.numel() for p in model.parameters() if p.grad is not None) == expected


def test_lora_count_equals_peft_own_count():
    config = Config(backbone="vit_nano", weights="none", rank=R, method="lora", lora_targets="qkv,fc1")
    _, counts = build(**{k: getattr(config, k) for k in ("method", "lora_targets")})
    wrapped = peft.get_peft_model(create_backbone("vit_nano", "none", C), lora_config(config, DEPTH, ("head",)))
    assert wrapped.get_nb_trainable_parameters()[0] == counts["trainable_params"]


@pytest.mark.parametrize("targets", ["q,v", "qkv,fc2", "k,proj"])
def test_merged_lora_gives_the_unmerged_logits(targets, frozen):
    model, _ = build(method="lora", lora_targets=targets)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained-looking update
        x, logits = frozen
        before = model(x)
        merge(model)
        after = model(x)
    assert not torch.allclose(before, logits, atol=1e-3)  # the update does something
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="merged"):  # merged weights have no backbone to fall back to
        with disabled(model):
            pass


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A mixed-family sweep on the synthetic task: LoRA and VPT at 3 capacities, BitFit once."""
    out = tmp_path_factory.mktemp("peft") / "runs"
    argv = ["train", "--dataset", "synthetic", "--num-classes", "4", "--train-samples", "96", "--test-samples", "48",
            "--backbone", "vit_nano", "--weights", "none", "--method", "lora,bitfit,vpt", "--rank", "1..4",
            "--vpt-tokens", "1,2,4", "--lora-targets", "qkv,fc2", "--epochs", "1", "--batch-size", "32",
            "--lr", "0.05", "--warmup-epochs", "0", "--feature-samples", "16", "--log-every", "0", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_sweep_runs_are_complete_and_load_reproduces_their_test_accuracy(sweep):
    ids = sorted(_plain_id(p.name) for p in sweep.iterdir())
    assert ids == sorted([f"synthetic-vit_nano-lora-r{r}-qkvfc2-s0" for r in (1, 2, 4)]
                         + [f"synthetic-vit_nano-vpt-r{t}-s0" for t in (1, 2, 4)] + ["synthetic-vit_nano-bitfit-s0"])
    for run in ("lora-r2-qkvfc2", "bitfit", "vpt-r2"):
        path = _run(sweep, run)
        summary = json.loads((path / "summary.json").read_text())
        assert summary["status"] == "complete" and (path / "features.safetensors").is_file()
        model = adaptertune.load(path)
        config = Config.from_dict(json.loads((path / "config.json").read_text()))
        _, test = data.load(config, model.preprocess.input_size)
        logits = torch.cat([model.logits(x) for x, _ in test.batches(list(torch.arange(len(test)).split(16)), "cpu")])
        acc = 100 * (logits.argmax(1) == test.labels).sum().item() / len(test)
        assert acc == pytest.approx(summary["test_acc1"], abs=100 / len(test) + 1e-9)  # merged LoRA: within one image


def test_peft_export_loads_in_peft_with_the_same_logits(sweep, tmp_path, frozen):
    run = _run(sweep, "lora-r4-qkvfc2")
    assert main(["export-peft", str(run), str(tmp_path / "peft")]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "peft").iterdir()}
    ours = adaptertune.load(run, merge=False).model
    assert any(p.abs().sum() > 0 for n, p in ours.named_parameters() if "lora_B" in n)  # trained, not the init
    loaded = peft.PeftModel.from_pretrained(create_backbone("vit_nano", "none", 4), str(tmp_path / "peft")).eval()
    x = frozen[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))


def test_split_qkv_runs_do_not_export(tmp_path, capsys):
    run = tmp_path / "runs"
    argv = ["train", "--dataset", "synthetic", "--num-classes", "3", "--train-samples", "32", "--test-samples", "16",
            "--backbone", "vit_nano", "--weights", "none", "--method", "lora", "--rank", "2", "--epochs", "1",
            "--batch-size", "32", "--feature-samples", "8", "--log-every", "0", "--out", str(run)]
    assert main(argv) == 0
    assert main(["export-peft", str(_run(run, "lora-r2")), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "q,v" in err and "not exportable" in err


def test_sweep_runs_group_per_family_with_their_parameter_counts(sweep):
    from adaptertune.analysis.capacity import collect
    from adaptertune.runs import discover

    sweeps, skipped, notes = collect(discover(sweep), x="params")
    assert not skipped and notes == ["1 bitfit run(s) are not part of a rank sweep (no capacity axis)"]
    levels = {members[0][4]: sorted(m[0] for m in members) for members in sweeps.values()}
    counts = {t: json.loads((_run(sweep, f"vpt-r{t}") / "summary.json").read_text())["trainable_params"]
              for t in (1, 2, 4)}
    assert levels["vpt"] == [counts[1], counts[2], counts[4]] and counts[2] - counts[1] == D  # one token: d
    assert len(levels["lora-qkv+fc2"]) == 3


def test_each_familys_capacity_axis_is_its_rank_in_rows_and_the_spectrum_by_rank(sweep, tmp_path):
    from adaptertune.analysis import spectrum_runs
    from adaptertune.runs import discover

    ranks = {(r["method"], r["rank"]) for r in discover(sweep).rows()}
    assert ranks == {("lora", 1), ("lora", 2), ("lora", 4), ("vpt", 1), ("vpt", 2), ("vpt", 4), ("bitfit", None)}
    by_rank = spectrum_runs.analyze_runs(sweep, tmp_path / "analysis", plot=False).by_rank()
    assert sorted((r["method"], r["rank"]) for r in by_rank) == sorted(m for m in ranks if m[1] is not None)


def test_capacity_fits_each_family_against_params(make_run, tmp_path, rng):
    params = {"lora": lambda r: 1000 * r, "vpt": lambda t: 48 * t}
    for method, count in params.items():
        for r in (1, 2, 4, 8):
            for seed in (0, 1):
                acc = 80 - 20 / r + rng.normal(0, 0.5)
                make_run(method=method, rank=r, seed=seed, summary={"test_acc1": acc, "trainable_params": count(r)})
    make_run(method="bitfit", summary={"test_acc1": 75.0, "trainable_params": 900})
    assert main(["analyze", "capacity", str(tmp_path / "runs"), "--x", "params", "--bootstrap", "20",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "capacity.json").read_text())
    assert report["options"]["x"] == "params"
    levels = {g["label"].split("/")[-1]: g["ranks"] for g in report["groups"]}
    assert levels == {"lora": [1000, 2000, 4000, 8000], "vpt": [48, 96, 192, 384]}
    assert any("bitfit" in n and "no capacity axis" in n for n in report["notes"])


def test_presets_fill_what_is_not_given():
    c = base_config(parser().parse_args(["train", "--preset", "adaptformer"]))
    assert (c.placement, c.scale, c.activation, c.adapter_scaling) == ("parallel", 0.1, "relu", "fixed")
    c = base_config(parser().parse_args(["train", "--preset", "adaptformer", "--scale", "1.0"]))
    assert c.scale == 1.0 and c.placement == "parallel"  # an explicit flag wins, even at the default value
    assert base_config(parser().parse_args(["train"])) == Config()
    c = base_config(parser().parse_args(["train", "--preset", "adapter-plus"]))
    assert (c.placement, c.adapter_scaling, c.init) == ("mlp", "channel", "houlsby")


def test_identity_and_run_ids_per_family():
    lora, vpt, bitfit = (Config(method=m, rank=8) for m in ("lora", "vpt", "bitfit"))
    assert "placement" not in lora.identity() and {"lora_targets", "lora_alpha", "rank"} <= set(lora.identity())
    assert "lora_targets" not in Config().identity() and "vpt_mode" not in lora.identity()
    assert "rank" not in bitfit.identity() and Config(method="bitfit", rank=2).config_key() == bitfit.config_key()
    assert _plain_id(vpt.run_id).endswith("vpt-r8-s0")
    assert _plain_id(Config(method="vpt", vpt_mode="deep").run_id).endswith("vpt-r16-deep-s0")
    assert _plain_id(bitfit.run_id).endswith("bitfit-s0")
    for bad in ("q,x", "qkv,q", ""):
        with pytest.raises(UserError, match="--lora-targets"):
            Config(method="lora", lora_targets=bad).validate()


def test_vpt_needs_a_vision_transformer():
    from adaptertune.peft_methods import add_vpt

    with pytest.raises(UserError, match="VisionTransformer"):
        add_vpt(torch.nn.Linear(2, 2), 2)


def test_lora_on_a_qkv_that_the_block_bypasses_is_refused():
    model = create_backbone("vit_nano", "none", C)
    for block in model.blocks:  # as Eva / Beit: separate q, v biases, qkv's weight read by F.linear
        block.attn.q_bias = torch.nn.Parameter(torch.zeros(D))
    from adaptertune.peft_methods import add_lora

    with pytest.raises(UserError, match="no effect"):
        add_lora(model, Config(method="lora", rank=2))


def test_significance_compares_the_sweeps_families_at_matched_budgets(sweep, tmp_path, capsys):
    count = {name: json.loads((_run(sweep, name) / "summary.json").read_text())["trainable_params"]
             for name in ("bitfit", "lora-r1-qkvfc2", "lora-r2-qkvfc2", "vpt-r4")}
    assert count["lora-r1-qkvfc2"] < count["bitfit"] < count["lora-r2-qkvfc2"] < 2 * count["lora-r1-qkvfc2"]
    assert count["lora-r1-qkvfc2"] > 2 * count["vpt-r4"]  # VPT is more than 2x away from every other family
    assert main(["analyze", "significance", str(sweep), "--bootstrap", "50", "--no-plot",
                 "--out", str(tmp_path / "sig")]) == 0
    out = capsys.readouterr().out
    assert "families at matched budgets" in out and "bitfit (1.88k) - lora-r1-qkv+fc2 (1.49k)" in out
    report = json.loads((tmp_path / "sig" / "significance.json").read_text())
    matched = [(c["a"], c["b"], c["params_a"], c["params_b"]) for c in report["budgets"]["comparisons"]]
    # bitfit's nearest LoRA is r1, whose nearest non-LoRA family is bitfit: the one match within 2x
    assert matched == [("bitfit", "lora-r1-qkv+fc2", count["bitfit"], count["lora-r1-qkvfc2"])]
    assert [(a["a"], a["b"]) for a in report["budgets"]["aggregates"]] == [("bitfit", "lora-qkv+fc2")]
    rows = (tmp_path / "sig" / "significance.csv").read_text().splitlines()
    assert sum(",matched budget,bitfit,lora-qkv+fc2," in r for r in rows) == 1


def test_capacity_names_each_sweeps_axis_in_text_csv_and_json(make_run, tmp_path, rng, capsys):
    import csv

    for r in (1, 2, 4, 8):
        for seed in (0, 1):
            make_run(method="vpt", rank=r, seed=seed, summary={"test_acc1": 80 - 20 / r + rng.normal(0, 0.5),
                                                              "trainable_params": 48 * r})
    runs, out = tmp_path / "runs", tmp_path / "out"
    for x, name in (("rank", "prompt tokens"), ("params", "trainable params")):
        assert main(["analyze", "capacity", str(runs), "--x", x, "--bootstrap", "20", "--out", str(out / x)]) == 0
        header = capsys.readouterr().out.splitlines()[0]
        assert header.split()[:3] == ["group", *name.split()] and "ranks" not in header
        group = json.loads((out / x / "capacity.json").read_text())["groups"][0]
        levels = [1, 2, 4, 8] if x == "rank" else [48, 96, 192, 384]
        assert group["axis"] == name and group["levels"] == levels == group["ranks"]  # "ranks": as before
        with open(out / x / "capacity.csv") as f:
            row = next(csv.DictReader(f))
        assert row["axis"] == name and row["levels"] == ";".join(map(str, levels)) and "ranks" not in row
    for r in (1, 2, 4):  # an adapter sweep beside it: two axes in one table
        for seed in (0, 1):
            make_run(method="adapter", rank=r, seed=seed, summary={"test_acc1": 70.0 + r + rng.normal(0, 0.5)})
    assert main(["analyze", "capacity", str(runs), "--bootstrap", "20", "--out", str(out / "both")]) == 0
    text = capsys.readouterr().out
    assert text.split()[:2] == ["group", "levels"] and "1,2,4,8 (prompt tokens)" in text and "1,2,4 (rank)" in text
