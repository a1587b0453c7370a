"""Every bad input ends before any run starts: one line on stderr, exit status 2, no traceback."""

import pytest
import torch

from adaptertune.cli import main

TINY = ["--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none", "--epochs", "1",
        "--train-samples", "40", "--test-samples", "16", "--feature-samples", "8", "--log-every", "0"]

TRAIN = [  # (flags after `train` + TINY, a phrase the message must hold)
    (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr must be positive"), (["--lr", "nan"], "--lr nan: not finite"),
    (["--lr", "inf"], "--lr inf: not finite"), (["--epochs", "0"], "--epochs"), (["--epochs", "-3"], "--epochs"),
    (["--epochs", "1000001"], "--epochs"), (["--epochs", "1.5"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "abc"], "--batch-size"), (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"), (["--clip-grad", "-1"], "--clip-grad"),
    (["--label-smoothing", "1.5"], "--label-smoothing"), (["--label-smoothing", "nan"], "--label-smoothing"),
    (["--val-fraction", "0"], "--val-fraction"), (["--val-fraction", "1"], "--val-fraction"),
    (["--scale", "nan"], "--scale"), (["--scale", "0"], "--scale 0"),
    (["--image-size", "30"], "multiple of its patch size 8"), (["--image-size", "-32"], "--image-size"),
    (["--image-size", "100000"], "--image-size"), (["--rank", "0"], "--rank"),
    (["--rank", "1000"], "larger than vit_nano's width 48"), (["--seeds", "-1"], "--seeds"),
    (["--seeds", "99999999999"], "--seed"), (["--feature-samples", "0"], "--feature-samples"),
    (["--num-classes", "1"], "--num-classes"), (["--train-samples", "1"], "--train-samples"),
    (["--workers", "-1"], "--workers"), (["--dataset", "planted", "--planted-rank", "0"], "--planted-rank"),
    (["--dataset", "planted", "--planted-rank", "1000"], "--planted-rank 1000"),
    (["--dataset", "planted", "--planted-strength", "-1"], "--planted-strength"),
    (["--device", "tpu"], "--device"), (["--device", "cuda:99"], "--device cuda:99"),
    (["--device", "cuda:x"], "--device"), (["--blocks", "every:100"], "selects no block"),
    (["--blocks", "some"], "--blocks"), (["--method", "dora"], "--method"), (["--placement", "inside"], "--placement"),
    (["--no-such-flag"], "unrecognized arguments"), (["--weights", "{tmp}/missing.pth"], "no such file"),
    (["--dataset", "folder:{tmp}/missing"], "expected"), (["--data-root", "{tmp}/a-file"], "a file, not a folder"),
    (["--out", "{tmp}/a-file"], "is a file, not a folder"), (["--out", "{tmp}/a-file/sub"], "is a file"),
    (["--out", "/proc/adaptertune-test"], "cannot write there"), (["--backbone", "vit_nanoo"], "unknown backbone"),
    (["--dataset", "imagenet-x"], "unknown dataset"), (["--dataset", ""], "--dataset"),
]

ANALYZE = [  # (argv with {runs} for a folder of runs, a phrase)
    (["analyze", "spectrum", "{tmp}/missing"], "no such folder"), (["analyze", "spectrum", "{tmp}/a-file"], "a file"),
    (["analyze", "spectrum", "{runs}", "--alpha", "0"], "--alpha"),
    (["analyze", "spectrum", "{runs}", "--energy-target", "1.5"], "--energy-target"),
    (["analyze", "spectrum", "{runs}", "--out", "{tmp}/a-file"], "is a file"),
    (["analyze", "capacity", "{runs}", "--delta", "-1"], "--delta"),
    (["analyze", "capacity", "{runs}", "--delta", "0"], "--delta"),
    (["analyze", "capacity", "{runs}", "--delta", "nan"], "--delta"),
    (["analyze", "capacity", "{runs}", "--horizon", "0.5"], "--horizon"),
    (["analyze", "capacity", "{runs}", "--bootstrap", "0"], "--bootstrap"),
    (["analyze", "capacity", "{runs}", "--seed", "-1"], "--seed"),
    (["analyze", "capacity", "{runs}", "--interval", "x"], "--interval"),
    (["analyze", "significance", "{runs}", "--metric", "bogus"], "--metric"),
    (["analyze", "significance", "{runs}", "--alpha", "1.5"], "--alpha"),
    (["analyze", "significance", "{runs}", "--alpha", "nan"], "--alpha"),
    (["analyze", "significance", "{runs}", "--claims", "{tmp}/missing.toml"], "no such file"),
    (["analyze", "significance", "{runs}", "--claims", "{tmp}"], "a folder"),
    (["analyze", "significance", "{runs}", "--claims", "{tmp}/latin1.toml"], "not UTF-8"),
    (["analyze", "significance", "{runs}", "--claims", "{tmp}/nan.toml"], "'at_least' must be a finite"),
    (["analyze", "significance", "{runs}", "--claims", "{tmp}/a-file"], "not valid TOML"),
    (["report", "{runs}", "--claims", "{tmp}/latin1.toml"], "not UTF-8"),
    (["analyze", "nothing", "{runs}"], "invalid choice"),
]


@pytest.fixture
def places(tmp_path):
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "latin1.toml").write_bytes('[[claim]]\nid = "caf\xe9"\nkind = "elbow"\nat_most = 8\n'.encode("latin-1"))
    (tmp_path / "nan.toml").write_text('[[claim]]\nid = "x"\nkind = "mean_diff"\na = "adapter"\nb = "head"\n'
                                       'at_least = nan\n')
    return tmp_path


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


def assert_one_line(capsys, argv, phrase):
    code = exit_code(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("adaptertune: error:"), err
    assert "Traceback" not in err and phrase in err, err


def test_there_are_at_least_40_cases():
    assert len(TRAIN) + len(ANALYZE) >= 40


@pytest.mark.parametrize("flags,phrase", TRAIN, ids=[" ".join(f) for f, _ in TRAIN])
def test_bad_train_input(capsys, places, flags, phrase):
    out = places / "out"
    flags = [f.format(tmp=places) for f in flags]
    argv = ["train", *TINY, "--out", str(out), *flags]
    assert_one_line(capsys, argv, phrase)
    assert not out.exists() or not any(out.iterdir()), "a run was started"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device(capsys, places):
    assert_one_line(capsys, ["train", *TINY, "--out", str(places / "out"), "--device", "cuda"], "no CUDA device")


@pytest.mark.parametrize("argv,phrase", ANALYZE, ids=[" ".join(a[:2] + a[3:]) for a, _ in ANALYZE])
def test_bad_analysis_input(capsys, places, argv, phrase):
    argv = [a.format(tmp=places, runs=places / "runs") for a in argv]
    assert_one_line(capsys, argv, phrase)
    assert not (places / "runs" / "analysis").exists()
