"""End to end on the CPU: the CLI sweep, the run directory contract, skipping and resuming."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from adaptertune import data, runs
from adaptertune.backbones import create_backbone
from adaptertune.cli import main
from adaptertune.config import Config

TINY = ["--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none", "--train-samples", "300",
        "--test-samples", "100", "--feature-samples", "64", "--batch-size", "64", "--log-every", "0"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", *TINY, "--rank", "1..2", "--seeds", "0..1", "--method", "adapter,head", "--epochs", "2",
            "--block-features", "--out", str(out)]
    assert main(argv) == 0
    return out, argv


def find_run(out, prefix: str, seed: int = 0):
    """The run folder `{prefix}-{config_key}-s{seed}` under `out`."""
    (path,) = out.glob(f"{prefix}-????????-s{seed}")
    return path


def test_sweep_writes_complete_run_directories(sweep):
    out, _ = sweep
    ids = sorted(re.sub(r"-[0-9a-f]{8}-s", "-s", p.name) for p in out.iterdir())
    assert ids == sorted(["synthetic-vit_nano-adapter-r1-s0", "synthetic-vit_nano-adapter-r1-s1",
                          "synthetic-vit_nano-adapter-r2-s0", "synthetic-vit_nano-adapter-r2-s1",
                          "synthetic-vit_nano-head-s0", "synthetic-vit_nano-head-s1"])
    for run_dir in out.iterdir():
        names = {p.name for p in run_dir.iterdir()}
        assert {"config.json", "metrics.jsonl", "summary.json", "adapter.safetensors",
                "features.safetensors"} <= names and not {"checkpoint.safetensors", "claim.json"} & names
        config = json.loads((run_dir / "config.json").read_text())
        assert Config.from_dict(config).run_id == run_dir.name
        assert {"resolved", "env"} <= set(config) and config["env"]["torch"] == torch.__version__
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "complete"
        for key in ("test_acc1", "best_val_acc1", "trainable_params", "total_params", "train_seconds"):
            assert summary[key] is not None
        events = runs.read_lines(run_dir / "metrics.jsonl")
        assert [(e["epoch"], e["split"]) for e in events] == [(1, "train"), (1, "val"), (2, "train"), (2, "val"),
                                                              (2, "test")]
        for e in events:
            assert {"loss", "acc1", "seconds", "images_per_s"} <= set(e)
        f = runs.load_arrays(run_dir / "features.safetensors")
        assert f["frozen"].shape == f["adapted"].shape == (64, 48) and f["frozen"].dtype == np.float32
        assert f["labels"].shape == f["indices"].shape == (64,)
        assert f["frozen.prelogits"].shape == f["adapted.prelogits"].shape == (64, 48)
        assert np.array_equal(f["frozen.block2"], f["frozen"])  # "frozen" is the last block's pooled output


def test_every_run_of_a_sweep_shares_the_frozen_features(sweep):
    out, _ = sweep
    feats = [runs.load_arrays(p / "features.safetensors") for p in sorted(out.iterdir())]
    for f in feats[1:]:
        assert np.array_equal(f["indices"], feats[0]["indices"])
        np.testing.assert_allclose(f["frozen"], feats[0]["frozen"], rtol=1e-5, atol=1e-5)
    head = runs.load_arrays(find_run(out, "synthetic-vit_nano-head") / "features.safetensors")
    adapter = runs.load_arrays(find_run(out, "synthetic-vit_nano-adapter-r2") / "features.safetensors")
    assert np.array_equal(head["adapted"], head["frozen"])  # a linear probe does not move the features
    assert not np.allclose(adapter["adapted"], adapter["frozen"])


def test_adapter_file_holds_only_trainable_weights(sweep):
    out, _ = sweep
    weights = runs.load_arrays(find_run(out, "synthetic-vit_nano-adapter-r2") / "adapter.safetensors")
    assert all(k.startswith("head.") or ".adapter." in k for k in weights)
    summary = json.loads((find_run(out, "synthetic-vit_nano-adapter-r2") / "summary.json").read_text())
    assert sum(v.size for v in weights.values()) == summary["trainable_params"]


def test_rerun_skips_finished_runs(sweep, capsys):
    out, argv = sweep
    before = {p: (p / "summary.json").stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 6
    assert before == {p: (p / "summary.json").stat().st_mtime_ns for p in out.iterdir()}


def test_killed_run_resumes_and_completes(tmp_path):
    argv = [sys.executable, "-m", "adaptertune.cli", "train", *TINY, "--train-samples", "1000", "--epochs", "6",
            "--rank", "2", "--out", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/checkpoint.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    run_dir = find_run(tmp_path, "synthetic-vit_nano-adapter-r2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "finished before it could be killed"
    done = [e["epoch"] for e in runs.read_lines(run_dir / "metrics.jsonl") if e["split"] == "val"]
    assert 1 <= len(done) < 6
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run_dir.name} after epoch" in result.stdout
    assert "took over the dead claim" in result.stdout  # the killed worker's claim did not block the run
    events = runs.read_lines(run_dir / "metrics.jsonl")
    assert [e["epoch"] for e in events if e["split"] == "val"] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    argv = ["train", *TINY, "--rank", "1,2", "--epochs", "1", "--lr", "1e30", "--clip-grad", "0",
            "--out", str(tmp_path)]
    main(argv)
    statuses = [json.loads((p / "summary.json").read_text())["status"] for p in sorted(tmp_path.iterdir())]
    assert statuses == ["diverged", "diverged"]


def _poison_params(trainer):  # weights that blow up on the last step while the loss stayed finite
    with torch.no_grad():
        trainer.model.head.weight.fill_(float("inf"))


@pytest.mark.parametrize("where,reason", [
    ("params", "non-finite parameters"), ("val loss", "validation loss is nan"),
    ("test loss", "test loss is nan"), ("features", "non-finite adapted features"),
])
def test_divergence_anywhere_is_recorded(tmp_path, monkeypatch, where, reason):
    from adaptertune import train
    from adaptertune.sweep import run_sweep

    config = Config(dataset="synthetic", backbone="vit_nano", weights="none", train_samples=40, test_samples=16,
                    feature_samples=8, batch_size=64, log_every=0, epochs=1, rank=2, quiet=True)
    train_epoch, evaluate, features = train.Trainer.train_epoch, train.Trainer.evaluate, train.Trainer.features
    if where == "params":
        monkeypatch.setattr(train.Trainer, "train_epoch", lambda t, *a: (train_epoch(t, *a), _poison_params(t))[0])
    if where.endswith("loss"):
        split_n = {"val loss": 4, "test loss": 16}[where]  # 10% of 40 held out; the 16 test images

        def bad_eval(t, images, idx, *a):
            out = evaluate(t, images, idx, *a)
            return {**out, "loss": float("nan")} if len(idx) == split_n else out
        monkeypatch.setattr(train.Trainer, "evaluate", bad_eval)
    if where == "features":
        calls = []

        def bad_features(t, idx):
            out = features(t, idx)
            calls.append(1)
            return {**out, "features": out["features"] * np.nan} if len(calls) == 2 else out  # adapted, not frozen
        monkeypatch.setattr(train.Trainer, "features", bad_features)
    assert run_sweep([config], tmp_path, log=lambda line: None) == 0
    run_dir = tmp_path / config.run_id
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["reason"].startswith(reason)
    assert "test_acc1" not in summary and not (run_dir / "features.safetensors").exists()
    assert not (run_dir / "checkpoint.safetensors").exists()


def test_local_weights_file_is_loaded(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("vit_micro", "none", num_classes=3)
    with torch.no_grad():
        source.blocks[0].attn.qkv.weight.add_(1.0)  # differs from the fixed random init
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    loaded = create_backbone("vit_micro", str(tmp_path / "w.safetensors"), num_classes=7)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert loaded.head.out_features == 7


def test_folder_dataset_is_decoded_once_into_a_cache(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        for cls in ("cat", "dog"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / cls / f"{i}.png")
    config = Config(dataset=f"folder:{tmp_path / 'img'}", data_root=str(tmp_path / "cache"), workers=0)
    train, test = data.load(config, image_size=28)
    assert train.images.shape == (12, 3, 32, 32) and test.images.shape == (8, 3, 32, 32)
    assert train.num_classes == 2 and sorted(train.labels.tolist()) == [0] * 6 + [1] * 6
    assert len(list((tmp_path / "cache" / "adaptertune-cache").glob("*.npy"))) == 2  # one array per split
    x, y = train.batch(torch.tensor([3, 0, 7]), "cpu")
    assert x.dtype == torch.uint8 and y.tolist() == sorted(train.labels[[3, 0, 7]].tolist())
    chunks = list(torch.arange(12).split(5))  # the prefetching reader yields the same batches, in order
    for (bx, by), chunk in zip(train.batches(chunks, "cpu"), chunks, strict=True):
        ex, ey = train.batch(chunk, "cpu")
        assert torch.equal(bx, ex) and torch.equal(by, ey)


def test_split_and_feature_subset_are_deterministic():
    a_train, a_val = data.split_indices(1000, 0.1, seed=3)
    b_train, b_val = data.split_indices(1000, 0.1, seed=3)
    assert np.array_equal(a_val, b_val) and len(a_val) == 100
    assert not np.intersect1d(a_train, a_val).size and len(a_train) + len(a_val) == 1000
    assert not np.array_equal(a_val, data.split_indices(1000, 0.1, seed=4)[1])
    assert np.array_equal(data.feature_indices(500, 64), data.feature_indices(500, 64))


def test_transform_eval_is_a_centre_crop_and_train_is_seeded():
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32).repeat(4, 1, 1, 1).to(torch.uint8)
    ev = data.transform(x, 28, (0, 0, 0), (1 / 255, 1 / 255, 1 / 255), train=False)
    assert ev.shape == (4, 3, 28, 28)
    torch.testing.assert_close(ev[0], x[0, :, 2:30, 2:30].float())  # central 0.875 = 28 of 32 pixels
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    t1 = data.transform(x, 16, (0.5,) * 3, (0.5,) * 3, train=True, generator=g1)
    assert torch.equal(t1, data.transform(x, 16, (0.5,) * 3, (0.5,) * 3, train=True, generator=g2))
    assert not torch.equal(t1[0], t1[1])  # a different crop per image


def test_linear_probe_on_cached_features_matches_the_backbone_path(tmp_path):
    """Head-only without augmentation trains on features computed once, to the same result."""
    summaries = []
    for cache in ("--cache-features", "--no-cache-features"):
        out = tmp_path / cache
        assert main(["train", *TINY, "--method", "head", "--no-augment", cache, "--epochs", "2", "--lr", "0.05",
                     "--out", str(out)]) == 0
        summaries.append(json.loads((find_run(out, "synthetic-vit_nano-head") / "summary.json").read_text()))
        metrics = runs.read_lines(find_run(out, "synthetic-vit_nano-head") / "metrics.jsonl")
        summaries[-1]["val_losses"] = [m["loss"] for m in metrics if m["split"] == "val"]
    cached, direct = summaries
    np.testing.assert_allclose(cached["val_losses"], direct["val_losses"], rtol=1e-4)
    assert cached["test_acc1"] == pytest.approx(direct["test_acc1"], abs=1.0)


def test_saved_features_show_the_adapter_rank_that_the_final_norm_would_hide():
    from adaptertune.adapters import adapters_disabled, add_adapters
    from adaptertune.features import extract
    from adaptertune.preprocess import Preprocess

    model = create_backbone("vit_micro", "none", num_classes=3)
    add_adapters(model, rank=2, blocks="last:1", init="random")
    x = data.procedural_images(200, 32, torch.Generator().manual_seed(0))
    images = data.Images(x, torch.zeros(200, dtype=torch.long), 3)
    kw = dict(preprocess=Preprocess(32, (0.5,) * 3, (0.5,) * 3), device=torch.device("cpu"))
    with adapters_disabled(model):
        frozen = extract(model, images, np.arange(200), **kw)
    adapted = extract(model, images, np.arange(200), **kw)
    shift = (adapted["features"] - frozen["features"]).astype(np.float64)
    assert np.linalg.matrix_rank(shift, tol=1e-4 * np.abs(shift).max()) == 2
    after_norm = (adapted["prelogits"] - frozen["prelogits"]).astype(np.float64)
    assert np.linalg.matrix_rank(after_norm, tol=1e-4 * np.abs(after_norm).max()) > 10
