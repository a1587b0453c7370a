"""The run directory: identity, claims between workers, and discovery that skips what it cannot use."""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from adaptertune import lock, runs
from adaptertune.config import EXECUTION, METHOD_FIELDS, Config
from adaptertune.errors import UserError
from adaptertune.sweep import run_sweep

from conftest import write_fake_run

TINY = ["--dataset", "synthetic", "--backbone", "vit_nano", "--weights", "none", "--train-samples", "40",
        "--test-samples", "16", "--feature-samples", "8", "--batch-size", "64", "--log-every", "0", "--epochs", "1"]


# -- identity ----------------------------------------------------------------------------------------

def other_value(config: Config, name: str):
    v = getattr(config, name)
    choices = dataclasses.fields(Config)[[f.name for f in dataclasses.fields(Config)].index(name)].metadata.get("choices")
    if choices:
        return next(c for c in choices if c != v)
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v * 2 + 1 if name != "val_fraction" else 0.2
    return {"blocks": "last:2", "dataset": "cifar10", "weights": "none"}.get(name, v + "x")


def test_every_result_changing_field_changes_the_run_id_and_execution_options_do_not():
    for name in (f.name for f in dataclasses.fields(Config)):
        # a method's own options are part of its identity only: change each under a method that reads it
        method = next((m for m, fields in METHOD_FIELDS.items() if name in fields), "adapter")
        base = Config(method=method, dataset="planted")
        changed = dataclasses.replace(base, **{name: other_value(base, name)})
        if name in EXECUTION:
            assert changed.run_id == base.run_id, name
        elif name == "seed":
            assert changed.run_id != base.run_id and changed.config_key() == base.config_key()
            assert re.sub(r"-s\d+$", "", changed.run_id) == re.sub(r"-s\d+$", "", base.run_id)
        else:
            assert changed.config_key() != base.config_key(), name
            assert changed.run_id != base.run_id, name


def test_a_run_recorded_with_another_configuration_is_refused_before_any_run_starts(tmp_path):
    first, second = Config(**{**_tiny(), "seed": 0}), Config(**{**_tiny(), "seed": 1})
    recorded = {**second.to_dict(), "lr": 0.05, "label_smoothing": 0.1}
    runs.write_json(tmp_path / second.run_id / "config.json", recorded)
    with pytest.raises(UserError, match=r"another configuration: label_smoothing 0.1 \(now 0.0\), lr 0.05"):
        run_sweep([first, second], tmp_path, log=lambda line: None)
    assert not (tmp_path / first.run_id).exists()  # refused up front, nothing trained


def _tiny(**kw) -> dict:
    return dict(dataset="synthetic", backbone="vit_nano", weights="none", train_samples=40, test_samples=16,
                feature_samples=8, batch_size=64, log_every=0, epochs=1, rank=2, quiet=True, **kw)


# -- claims ------------------------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_claim_is_respected_and_released(tmp_path):
    mine = lock.claim(tmp_path / "run")
    assert mine is not None and mine.info["host"] == socket.gethostname() and mine.info["pid"] == os.getpid()
    assert lock.claim(tmp_path / "run") is None  # held by a live process (this one)
    assert lock.holder(tmp_path / "run")["token"] == mine.info["token"]
    (tmp_path / "run" / "config.json").write_text("{}")
    mine.release()
    assert not (tmp_path / "run" / lock.NAME).exists() and lock.holder(tmp_path / "run") is None
    again = lock.claim(tmp_path / "run")
    assert again is not None
    again.release()


@pytest.mark.parametrize("case", ["dead pid", "reused pid", "other host, stale", "torn, stale"])
def test_a_dead_claim_is_taken_over(tmp_path, case):
    path = tmp_path / "run" / lock.NAME
    path.parent.mkdir()
    info = {"host": socket.gethostname(), "pid": dead_pid(), "proc_start": None, "token": "old"}
    if case == "reused pid":  # our pid, but a process that started at another time
        info.update(pid=os.getpid(), proc_start="1")
    if case == "other host, stale":
        info.update(host="node-that-died", pid=os.getpid())
    path.write_text("" if case.startswith("torn") else json.dumps(info))
    if "stale" in case:
        old = time.time() - lock.STALE - 5
        os.utime(path, (old, old))
    taken = lock.claim(tmp_path / "run")
    assert taken is not None and taken.held()
    assert taken.took_over == ({} if case.startswith("torn") else info)
    assert not path.with_name(lock.NAME + ".break").exists()
    taken.release()


@pytest.mark.parametrize("case", ["other host, fresh heartbeat", "torn, fresh", "taking over"])
def test_a_claim_that_may_be_live_is_not_taken(tmp_path, case):
    path = tmp_path / "run" / lock.NAME
    path.parent.mkdir()
    path.write_text("" if case.startswith("torn") else json.dumps(
        {"host": "busy-node", "pid": 1, "token": "t"} if case.startswith("other") else
        {"host": socket.gethostname(), "pid": dead_pid(), "token": "t"}))
    if case == "taking over":  # another worker holds the takeover lock right now
        path.with_name(lock.NAME + ".break").write_text("{}")
    assert lock.claim(tmp_path / "run") is None
    assert path.exists()


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT", 0.05)
    claim = lock.claim(tmp_path / "run")
    old = time.time() - 100
    os.utime(claim.path, (old, old))
    time.sleep(0.3)
    assert claim.path.stat().st_mtime > old + 50
    claim.release()


def test_two_workers_on_one_sweep_train_every_run_once(tmp_path):
    """Two real `adaptertune train` processes on one --out: each run is trained by exactly one."""
    argv = [sys.executable, "-m", "adaptertune.cli", "train", *TINY, "--rank", "1,2,4",
            "--out", str(tmp_path)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    run_dirs = sorted(p for p in tmp_path.iterdir())
    assert len(run_dirs) == 3
    for run_dir in run_dirs:
        trained = [o.count(f"{run_dir.name}: complete") for o, _ in outs]
        assert sorted(trained) == [0, 1], (run_dir.name, trained)
        events = runs.read_lines(run_dir / "metrics.jsonl")
        assert [(e["epoch"], e["split"]) for e in events] == [(1, "train"), (1, "val"), (1, "test")]
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
        assert not (run_dir / lock.NAME).exists()


# -- discovery -----------------------------------------------------------------------------------------

def features(rng, n=12, d=8):
    frozen = rng.normal(size=(n, d)).astype(np.float32)
    shift = np.outer(rng.normal(size=n), rng.normal(size=d)).astype(np.float32)
    return {"frozen": frozen, "adapted": frozen + shift, "labels": np.arange(n), "indices": np.arange(n)}


def raw_json(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_discovery_skips_and_names_every_unusable_run_and_keeps_the_rest(tmp_path, rng):
    good = tmp_path / "good"
    kw = dict(dataset="synthetic", backbone="vit_nano", method="adapter")
    for rank, seed in ((1, 0), (1, 1), (2, 0), (2, 1)):
        write_fake_run(good, rank=rank, seed=seed, features=features(rng), summary={"test_acc1": 50.0 + rank + seed},
                       **kw)
    mixed = tmp_path / "mixed"
    import shutil

    shutil.copytree(good, mixed / "sweep")
    broken = {}

    def bad(name, why, **files):
        path = mixed / "sweep" / name
        for fname, text in files.items():
            raw_json(path / fname.replace("_", "."), text)
        broken[path] = why

    ok_config = json.dumps(Config(**kw, seed=5).to_dict())
    bad("no-config", "no config.json", summary_json='{"status": "complete", "test_acc1": 50}')
    bad("no-summary", "incomplete (no summary.json)", config_json=ok_config)
    bad("bad-json", "unreadable summary.json", config_json=ok_config, summary_json='{"status": ')
    bad("not-utf8", "unreadable config.json", config_json=b'{"dataset": "caf\xe9"}', summary_json='{"status": "complete"}')
    bad("wrong-type", "seed 'zero' is not int", config_json=ok_config.replace('"seed": 5', '"seed": "zero"'),
        summary_json='{"status": "complete"}')
    bad("lacks-backbone", "lacks backbone", config_json=json.dumps({"dataset": "x", "method": "head", "seed": 0}),
        summary_json='{"status": "complete"}')
    bad("nan-metric", "test_acc1 is nan", config_json=ok_config, summary_json='{"status": "complete", "test_acc1": NaN}')
    bad("string-metric", "test_acc1 '50' is not a number", config_json=ok_config,
        summary_json='{"status": "complete", "test_acc1": "50"}')
    bad("odd-status", "unknown status 'done'", config_json=ok_config, summary_json='{"status": "done"}')
    bad("diverged", "status diverged: training loss is nan", config_json=ok_config,
        summary_json='{"status": "diverged", "reason": "training loss is nan"}')
    bad("torn-features", "unreadable features.safetensors", config_json=ok_config,
        summary_json='{"status": "complete"}', features_safetensors=b"\x10\x00")
    for name, arrays, why in (
            ("wide", features(rng, d=16), "feature width 16, but 3 other run(s) of synthetic/vit_nano have 8"),
            ("mismatch", {**features(rng), "adapted": np.zeros((12, 9), np.float32)}, "not one (n, d) shape")):
        path = write_fake_run(mixed / "sweep" / name, features=arrays, **kw, rank=3, seed=len(broken),
                              summary={"test_acc1": 1.0})
        broken[path] = why
    twin = write_fake_run(mixed / "elsewhere", features=features(rng), **kw, rank=1, seed=0)
    broken[twin] = "the same run id as"
    broken[mixed / "sweep" / twin.name] = "the same run id as"

    found = runs.discover(mixed)
    reasons = dict(found.skipped)
    assert set(reasons) == set(broken)
    for path, why in broken.items():
        assert why in reasons[path], (path.name, reasons[path])
    kept = sorted(r.id for r in found.runs)
    assert kept == sorted(r.id for r in runs.discover(good).runs if r.id != twin.name)

    from adaptertune.analysis.spectrum_runs import analyze_runs

    clean = analyze_runs(good, tmp_path / "a1", plot=False)
    messy = analyze_runs(mixed, tmp_path / "a2", plot=False)
    by_run = {r.row["run"]: r for r in clean.runs}
    assert len(messy.runs) == 3
    for r in messy.runs:  # the good runs' numbers are unchanged by their broken neighbours
        np.testing.assert_array_equal(r.spectrum.singular_values, by_run[r.row["run"]].spectrum.singular_values)
    assert {name for name, _ in messy.skipped} >= {p.name for p in broken}
