"""Use what was trained: `adaptertune.load(run_dir)` and `adaptertune predict`, from the run directory only."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import adaptertune
from adaptertune import data, runs
from adaptertune.cli import main
from adaptertune.config import Config
from adaptertune.errors import UserError

CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An adapter run and a full fine-tuning run on a folder dataset with named classes."""
    root = tmp_path_factory.mktemp("inference")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(CLASSES):
            (root / "img" / split / name).mkdir(parents=True)
            x = data.procedural_images(n, 40, g)
            x[:, c] = x[:, c] // 2 + 128  # a colour cast per class: learnable
            for i, img in enumerate(x):
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / "img" / split / name / f"{i}.png")
    argv = ["train", "--dataset", f"folder:{root / 'img'}", "--data-root", str(root / "cache"), "--workers", "0",
            "--backbone", "vit_nano", "--weights", "none", "--method", "adapter,full", "--rank", "4", "--epochs", "1",
            "--batch-size", "16", "--lr", "0.02", "--warmup-epochs", "0", "--feature-samples", "8", "--log-every", "0",
            "--out", str(root / "runs")]
    assert main(argv) == 0
    return root


@pytest.mark.parametrize("method", ["adapter-r4", "full"])
def test_load_reproduces_the_recorded_test_accuracy(trained, method, monkeypatch):
    run = next((trained / "runs").glob(f"img-vit_nano-{method}-????????-s0"))  # -{config_key}-
    summary = json.loads((run / "summary.json").read_text())

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load must never unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    model = adaptertune.load(run)
    monkeypatch.undo()

    assert model.classes == list(CLASSES) and model.backbone == "vit_nano"
    assert "vit_nano" in repr(model) and "3 classes" in repr(model)
    config = Config.from_dict(json.loads((run / "config.json").read_text()))
    _, test = data.load(config, model.preprocess.input_size)
    logits = torch.cat([model.logits(x) for x, _ in test.batches(list(torch.arange(len(test)).split(7)), "cpu")])
    assert 100 * (logits.argmax(1) == test.labels).sum().item() / len(test) == summary["test_acc1"]
    assert not any(p.requires_grad for p in model.model.parameters()) and not model.model.training
    state = model.model.state_dict()
    for name, weight in runs.load_arrays(run / "adapter.safetensors").items():  # the trained weights, all in place
        assert torch.equal(state[name], torch.from_numpy(weight)), name


def test_adapter_file_metadata_carries_what_load_needs(trained):
    from safetensors import safe_open

    run = next((trained / "runs").glob("img-vit_nano-adapter-r4-????????-s0"))
    with safe_open(str(run / "adapter.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["adaptertune"])
    assert info["model"] == "vit_nano" and info["classes"] == list(CLASSES)
    assert info["preprocess"] == {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.875,
                                  "crop_mode": "center", "interpolation": "bilinear"}
    assert info["adapter"]["rank"] == 4 and info["versions"]["torch"] == torch.__version__
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["model"] == "vit_nano" and resolved["weights_source"].startswith("none")
    assert resolved["features_precision"] == "fp32" and resolved["preprocess"]["crop_pct"] == 0.875


def test_predict_prints_the_top_classes_by_name(trained, capsys):
    run = next((trained / "runs").glob("img-vit_nano-adapter-r4-????????-s0"))
    files = [trained / "img" / "test" / "fox" / "0.png", trained / "img" / "test" / "cat" / "1.png"]
    assert main(["predict", str(run), *map(str, files), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(files[0]) and lines[3] == str(files[1]) and len(lines) == 6
    model = adaptertune.load(run)
    for path, block in zip(files, (lines[1:3], lines[4:6])):
        x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        p = model.logits(x[None]).softmax(1)[0]
        top = p.topk(2)
        expected = [f"  {100 * v:6.2f}%  {CLASSES[i]}" for v, i in zip(top.values.tolist(), top.indices.tolist())]
        assert block == expected


def test_predict_errors_are_one_line(trained, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    run = next((trained / "runs").glob("img-vit_nano-adapter-r4-????????-s0"))
    assert main(["predict", str(run), str(tmp_path / "bad.png")]) == 2
    assert main(["predict", str(tmp_path), str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "cannot read image" in err[0] and "no adapter.safetensors" in err[1]
    with pytest.raises(UserError):
        adaptertune.load(tmp_path)
