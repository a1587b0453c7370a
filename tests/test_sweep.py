import pytest

from adaptertune.cli import main
from adaptertune.config import Config
from adaptertune.errors import UserError
from adaptertune.sweep import parse_methods, parse_ranks, parse_seeds, plan


@pytest.mark.parametrize("spec,expected", [
    ("4..64", [4, 8, 16, 32, 64]), ("1..8", [1, 2, 4, 8]), ("16", [16]), ("16..16", [16]),
    ("4,12,20", [4, 12, 20]), ("20, 4,12", [4, 12, 20]), ("8,8", [8]),
])
def test_rank_specs(spec, expected):
    assert parse_ranks(spec) == expected


@pytest.mark.parametrize("spec,expected", [("0..2", [0, 1, 2]), ("3", [3]), ("0,5", [0, 5])])
def test_seed_specs(spec, expected):
    assert parse_seeds(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("4..60", "not 4 times a power of two"), ("0..8", "need 1 <= start"), ("64..4", "start <= end"),
    ("four", "expected a range"), ("4-64", "expected a range"), ("", "expected a range"), ("0", ">= 1"),
])
def test_bad_rank_specs(spec, message):
    with pytest.raises(UserError, match=message):
        parse_ranks(spec)


def test_methods_and_plan():
    assert parse_methods("head,full") == ["head", "full"]
    with pytest.raises(UserError, match="choose from"):
        parse_methods("adapter,dora")
    configs = plan(Config(), ["adapter", "head"], [4, 8], [0, 1])
    k4, k8, head = configs[0].config_key(), configs[2].config_key(), configs[4].config_key()
    assert [c.run_id for c in configs] == [
        f"cifar100-vit_small_patch16_224-adapter-r4-{k4}-s0", f"cifar100-vit_small_patch16_224-adapter-r4-{k4}-s1",
        f"cifar100-vit_small_patch16_224-adapter-r8-{k8}-s0", f"cifar100-vit_small_patch16_224-adapter-r8-{k8}-s1",
        f"cifar100-vit_small_patch16_224-head-{head}-s0", f"cifar100-vit_small_patch16_224-head-{head}-s1"]
    assert len({k4, k8, head}) == 3 and all(configs[i].config_key() == configs[i + 1].config_key() for i in (0, 2, 4))


def _error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("adaptertune: error:") and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,message", [
    (["train", "--rank", "4..60"], "--rank 4..60"),
    (["train", "--seeds", "a..b"], "--seeds"),
    (["train", "--method", "dora"], "--method"),
    (["train", "--blocks", "every:0"], "--blocks"),
    (["train", "--placement", "inside"], "--placement"),
])
def test_cli_bad_specs_one_line_exit_2(capsys, tmp_path, argv, message):
    assert message in _error_line(capsys, argv + ["--out", str(tmp_path)])


def test_cli_unknown_backbone_suggests_close_names(capsys, tmp_path):
    err = _error_line(capsys, ["train", "--backbone", "vit_smal_patch16_224", "--dataset", "synthetic",
                               "--out", str(tmp_path)])
    assert "unknown backbone" in err and "vit_small_patch16_224" in err


def test_cli_missing_weights_file_and_dataset_root(capsys, tmp_path):
    err = _error_line(capsys, ["train", "--backbone", "vit_micro", "--weights", str(tmp_path / "nope.pth"),
                               "--dataset", "synthetic", "--out", str(tmp_path)])
    assert "no such file" in err
    err = _error_line(capsys, ["train", "--backbone", "vit_micro", "--weights", "none",
                               "--dataset", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path)])
    assert "expected" in err and "missing" in err
