"""One run over two processes (torchrun, gloo, CPU): the same run as one process at the same global
batch, written once, resumed after a kill; and the pieces (shards, loss weights, augmentation rows,
DDP over every method's trainable parameters) in-process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import adaptertune
from adaptertune import runs
from adaptertune.cli import main
from adaptertune.config import Config
from adaptertune.distributed import Context
from adaptertune.images import transform

# 301 samples: 271 train, 30 val; at global batch 32, 9 steps an epoch, the last one of 15 images
# (8 + 7 over two processes). Augmentation on (the default): each image gets its one-process crop.
ARGS = ["train", "--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none", "--train-samples", "301",
        "--test-samples", "64", "--feature-samples", "32", "--batch-size", "32", "--lr", "0.05", "--warmup-epochs", "1",
        "--epochs", "4", "--rank", "2", "--log-every", "0", "--device", "cpu", "--quiet"]
# Measured (2 CPU cores, torch 2.14, fp32, this configuration): the two-process run's per-epoch losses
# differ from one process's by at most 9.8e-8 (train) and 1.2e-7 (val) relative, the trained weights
# by 3.0e-7 of each tensor's largest entry, the adapted features by 1.7e-7: float summation order
# (the gradient summed over two halves, then averaged). With each rank drawing its own crops instead
# of its rows of the global batch's, the train losses differed by 1.3e-2 and the weights by 0.9.
RTOL = 1e-5
TIMING = ("seconds", "images_per_s", "train_seconds")


def torchrun(out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "adaptertune", *ARGS, "--out", str(out)]


def env() -> dict:
    root = str(Path(adaptertune.__file__).resolve().parents[1])  # this checkout, not another install
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def only_run(out: Path) -> Path:
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same configuration trained by one process (here) and by two (torchrun)."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    assert main([*ARGS, "--out", str(one)]) == 0
    result = subprocess.run(torchrun(two), env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run(one), only_run(two), result.stdout


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (torchrun puts its workers in sessions of their own), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_two_processes_write_one_complete_run_directory(pair):
    one, two, stdout = pair
    assert two.name == one.name  # the world size is not part of the configuration
    assert {p.name for p in two.iterdir()} == {"config.json", "split.json", "metrics.jsonl", "summary.json",
                                              "adapter.safetensors", "features.safetensors"}
    events = runs.read_lines(two / "metrics.jsonl")
    assert [(e["epoch"], e["split"]) for e in events] == [
        *[(e, s) for e in range(1, 5) for s in ("train", "val")], (4, "test")]  # each row once
    assert json.loads((two / "summary.json").read_text())["status"] == "complete"
    assert stdout.count("complete, test acc") == 1 and stdout.count("epoch 4/4") == 1  # rank 0 alone logs
    config = json.loads((two / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["resolved"]["world_size"] == 1
    assert config["resolved"]["lr"] == json.loads((one / "config.json").read_text())["resolved"]["lr"]
    assert (two / "split.json").read_bytes() == (one / "split.json").read_bytes()


def test_two_processes_follow_the_one_process_trajectory(pair):
    one, two, _ = pair
    a, b = runs.read_lines(one / "metrics.jsonl"), runs.read_lines(two / "metrics.jsonl")
    assert [(e["epoch"], e["split"]) for e in a] == [(e["epoch"], e["split"]) for e in b]
    losses = np.array([[x["loss"], y["loss"]] for x, y in zip(a, b)])
    assert np.ptp(losses[:, 0]) > 1e-3  # the loss moves: there is a trajectory to follow
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=RTOL)
    wa, wb = runs.load_arrays(one / "adapter.safetensors"), runs.load_arrays(two / "adapter.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert np.abs(wa[k] - wb[k]).max() <= RTOL * np.abs(wa[k]).max() + 1e-12, k
    fa, fb = runs.load_arrays(one / "features.safetensors"), runs.load_arrays(two / "features.safetensors")
    np.testing.assert_array_equal(fa["frozen"], fb["frozen"])
    np.testing.assert_allclose(fb["adapted"], fa["adapted"], rtol=RTOL, atol=RTOL * np.abs(fa["adapted"]).max())


def test_killed_two_process_run_resumes_under_torchrun(pair, tmp_path):
    _, reference, _ = pair
    proc = subprocess.Popen(torchrun(tmp_path), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/checkpoint.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    for pid in [*descendants(proc.pid), proc.pid]:  # the workers and the launcher die at once, like a lost node
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    run_dir = only_run(tmp_path)
    assert not (run_dir / "summary.json").exists(), "finished before it could be killed"
    result = subprocess.run(torchrun(tmp_path), env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run_dir.name} after epoch" in result.stdout
    assert "took over the dead claim" in result.stdout  # rank 0's claim, left by the killed job
    assert untimed(runs.read_lines(run_dir / "metrics.jsonl")) == untimed(runs.read_lines(reference / "metrics.jsonl"))
    for name in ("adapter.safetensors", "features.safetensors"):
        got, want = runs.load_arrays(run_dir / name), runs.load_arrays(reference / name)
        assert all(np.array_equal(got[k], want[k]) for k in want) and got.keys() == want.keys(), name
    assert not list(tmp_path.rglob("checkpoint.safetensors")) and not list(tmp_path.rglob("claim.json"))


def test_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    argv = [a if a != "32" else "33" for a in ARGS]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["adaptertune: error: --batch-size 33 is the global batch: it must split evenly over the 2 "
                   "processes (a multiple of 2)"]
    assert not torch.distributed.is_initialized()


# -- the pieces, in one process -------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3])
def test_shards_cut_each_global_batch_into_contiguous_balanced_slices(world):
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    parts = [Context(rank, world).shard(order, 16) for rank in range(world)]
    batches = list(order.split(16))
    assert all(len(p) == len(batches) for p in parts)  # every rank takes every step
    for step, batch in enumerate(batches):
        slices = [p[step] for p in parts]
        assert torch.equal(torch.cat([s[0] for s in slices]), batch)  # each image once, in order
        assert [s[1] for s in slices] == list(np.cumsum([0] + [len(s[0]) for s in slices[:-1]]))
        assert {s[2] for s in slices} == {len(batch)}
        assert max(len(s[0]) for s in slices) - min(len(s[0]) for s in slices) <= 1
    single = Context().shard(order, 16)  # one process: the global batches themselves
    assert [(first, n) for _, first, n in single] == [(0, len(b)) for b in batches]
    assert all(torch.equal(idx, b) for (idx, _, _), b in zip(single, batches))


def test_rank_objectives_average_to_the_global_batch_mean_loss():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(15, 5, generator=g), torch.randint(0, 5, (15,), generator=g)
    want = F.cross_entropy(logits, y, label_smoothing=0.1)
    for world in (2, 3, 16):  # 16: one slice is empty
        got, summed = [], 0.0
        for rank in range(world):
            (idx, first, total), = Context(rank, world).shard(torch.arange(15), 32)
            objective, loss_sum = Context(rank, world).objective(logits[idx], y[idx], total, 0.1)
            got.append(objective)
            summed += loss_sum
        torch.testing.assert_close(torch.stack(got).mean(), want)  # what DDP's gradient mean differentiates
        torch.testing.assert_close(summed / 15, want)
    loss, loss_sum = Context().objective(logits, y, 15, 0.1)
    assert torch.equal(loss, want) and torch.equal(loss_sum, want * 15)


def test_each_rank_augments_its_rows_as_one_process_would():
    x = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5,) * 3, (0.5,) * 3
    whole = transform(x, 8, mean, std, True, torch.Generator().manual_seed(3))
    for lo, hi in ((0, 5), (5, 10), (3, 4)):
        part = transform(x[lo:hi], 8, mean, std, True, torch.Generator().manual_seed(3), within=(lo, 10))
        torch.testing.assert_close(part, whole[lo:hi], rtol=0, atol=0)
    other = transform(x[5:], 8, mean, std, True, torch.Generator().manual_seed(3))  # a per-rank draw differs
    assert not torch.allclose(other, whole[5:])


METHODS = [dict(method="adapter", blocks="every:2"), dict(method="adapter", adapter_scaling="channel"),
           dict(method="head"), dict(method="full"), dict(method="lora"), dict(method="lora", lora_targets="qkv,fc1"),
           dict(method="bitfit"), dict(method="vpt"), dict(method="vpt", vpt_mode="deep")]


@pytest.fixture(scope="module")
def one_process_group():
    """A gloo process group of one (DDP's checks run as they do with more processes)."""
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("fields", METHODS, ids=lambda f: "-".join(map(str, f.values())))
def test_ddp_over_every_methods_trainable_parameters_needs_no_unused_parameter_search(one_process_group, fields):
    from adaptertune.backbones import build_model

    torch.manual_seed(0)
    model, _ = build_model(Config(backbone="vit_nano", weights="none", rank=2, **fields), 5)
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False, as train.py wraps
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for _ in range(2):  # DDP raises in the second step when a parameter got no gradient in the first
        ddp.zero_grad()
        F.cross_entropy(ddp(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
