"""Crash consistency: a kill at every write point of a run, then a rerun, leaves exactly what an
uninterrupted sweep leaves. Kills are simulated in-process (the k-th write leaves what a kill -9
in the middle of it leaves: a temporary file, or half a line, then the process "dies"); a few real
kill -9 cases run in subprocesses (test_train.py, test_runs.py)."""

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest

from adaptertune import checkpoint, runs
from adaptertune.config import Config
from adaptertune.sweep import run_sweep

BASE = Config(dataset="synthetic", backbone="vit_nano", weights="none", train_samples=40, test_samples=16,
              feature_samples=8, batch_size=64, log_every=0, epochs=1, rank=2, quiet=True)
A, B = BASE, dataclasses.replace(BASE, seed=1)  # A finished before the crash; B is the one crashed
# The write points of B's run, in order (`writes` below records them for a clean run).
POINTS = ["split.json", "config.json", "remove metrics.jsonl", "append metrics.jsonl train",
          "append metrics.jsonl val", "checkpoint.safetensors", "append metrics.jsonl test",
          "features.safetensors", "adapter.safetensors", "summary.json", "remove checkpoint.safetensors"]
TIMING = ("seconds", "images_per_s", "train_seconds")


class Killed(BaseException):
    """The process died here (not an Exception: the sweep must not catch and record it)."""


def quiet(line):
    pass


def writes(monkeypatch, kill_at: int | None = None, full_disk: int = 0) -> list[str]:
    """Route runs' write functions through a recorder; at write `kill_at`, die the way a kill -9
    would leave things; with `full_disk`, fail that many writes from `kill_at` on with ENOSPC instead."""
    seen: list[str] = []
    atomic_write, append_line, remove = runs.atomic_write, runs.append_line, runs.remove

    def point(name, do, torn):
        seen.append(name)
        if full_disk and kill_at <= len(seen) - 1 < kill_at + full_disk:
            raise OSError(28, "No space left on device")
        if len(seen) - 1 == kill_at and not full_disk:
            torn()
            raise Killed(name)
        return do()

    def torn_tmp(path):
        (Path(path).parent / f".{Path(path).name}.dead.tmp").write_bytes(b"half a fi")

    def torn_line(path):
        with open(path, "a") as f:
            f.write('{"epoch": 1, "spl')

    monkeypatch.setattr(runs, "atomic_write", lambda path, write: point(
        Path(path).name, lambda: atomic_write(path, write), lambda: torn_tmp(path)))
    monkeypatch.setattr(runs, "append_line", lambda path, row: point(
        f"append {Path(path).name} {row['split']}", lambda: append_line(path, row), lambda: torn_line(path)))
    monkeypatch.setattr(runs, "remove", lambda path: point(
        f"remove {Path(path).name}", lambda: remove(path), lambda: None))
    return seen


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


def same_safetensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(a), "np") as fa, safe_open(str(b), "np") as fb:
        return fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys()) and all(
            fa.get_tensor(k).tobytes() == fb.get_tensor(k).tobytes() for k in fa.keys())


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted sweep of A and B, and B's write points in order."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        run_sweep([A], out, log=quiet)
        seen = writes(mp)
        run_sweep([B], out, log=quiet)
    return out, seen


def test_every_write_of_a_run_goes_through_the_recorded_points(reference):
    assert reference[1] == POINTS


def assert_like_reference(out: Path, ref: Path):
    """A untouched byte for byte, B as if never interrupted, and nothing left over."""
    a, b = A.run_id, B.run_id
    assert files(out / a) == files(ref / a)
    got, want = files(out / b), files(ref / b)
    assert set(got) == set(want) == {"config.json", "split.json", "metrics.jsonl", "summary.json",
                                      "features.safetensors", "adapter.safetensors"}
    assert got["split.json"] == want["split.json"]
    for name in ("features.safetensors", "adapter.safetensors"):  # the same tensors and metadata (its key
        assert same_safetensors(out / b / name, ref / b / name), name  # order is not fixed by safetensors)
    events = runs.read_lines(out / b / "metrics.jsonl")
    assert [(e["epoch"], e["split"]) for e in events] == [(1, "train"), (1, "val"), (1, "test")]
    assert untimed(events) == untimed(runs.read_lines(ref / b / "metrics.jsonl"))
    assert untimed([json.loads(got["summary.json"])]) == untimed([json.loads(want["summary.json"])])
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("claim.json*"))


@pytest.mark.parametrize("kill_at", range(len(POINTS)), ids=POINTS)
def test_kill_at_each_write_point_then_rerun(reference, tmp_path, monkeypatch, kill_at):
    ref, _ = reference
    shutil.copytree(ref / A.run_id, tmp_path / A.run_id)
    with monkeypatch.context() as mp:
        writes(mp, kill_at=kill_at)
        with pytest.raises(Killed):
            run_sweep([A, B], tmp_path, log=quiet)
    if kill_at < POINTS.index("summary.json"):
        assert not runs.is_finished(tmp_path / B.run_id)
    assert run_sweep([A, B], tmp_path, log=quiet) == 0
    assert_like_reference(tmp_path, ref)


@pytest.mark.parametrize("full", [1, 2], ids=["failure-recorded", "failure-unrecordable"])
def test_full_disk_fails_the_run_not_the_sweep_and_a_rerun_completes_it(reference, tmp_path, monkeypatch, full):
    """No space at a write: the run is recorded "failed" and the sweep goes on to the next run; when
    even the "failed" summary cannot be written, the sweep still goes on."""
    ref, _ = reference
    lines = []
    with monkeypatch.context() as mp:
        writes(mp, kill_at=POINTS.index("checkpoint.safetensors"), full_disk=full)
        assert run_sweep([B, A], tmp_path, log=lines.append) == 1
    assert any(B.run_id in line and "FAILED" in line and "No space" in line for line in lines)
    assert runs.is_finished(tmp_path / A.run_id)  # the sweep went on after B
    if full == 2:  # the failure could not be recorded either
        assert any("could not record the failure" in line for line in lines)
        assert not (tmp_path / B.run_id / "summary.json").exists()
    else:
        assert json.loads((tmp_path / B.run_id / "summary.json").read_text())["status"] == "failed"
    shutil.rmtree(tmp_path / A.run_id)
    shutil.copytree(ref / A.run_id, tmp_path / A.run_id)
    assert run_sweep([A, B], tmp_path, log=quiet) == 0
    assert_like_reference(tmp_path, ref)


def interrupted_after_checkpoint(tmp_path, monkeypatch) -> Path:
    with monkeypatch.context() as mp:
        writes(mp, kill_at=POINTS.index("checkpoint.safetensors") + 1)
        with pytest.raises(Killed):
            run_sweep([B], tmp_path, log=quiet)
    assert (tmp_path / B.run_id / checkpoint.NAME).exists()
    return tmp_path / B.run_id / checkpoint.NAME


class Payload:
    def __reduce__(self):
        import os

        return os.system, (f"touch {MARKER}",)


MARKER = Path("/tmp/adaptertune-test-pickle-ran")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle", "legacy-pickle"])
def test_unusable_checkpoint_is_set_aside_and_the_run_restarts(reference, tmp_path, monkeypatch, damage):
    ref, _ = reference
    shutil.copytree(ref / A.run_id, tmp_path / A.run_id)
    path = interrupted_after_checkpoint(tmp_path, monkeypatch)
    MARKER.unlink(missing_ok=True)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:  # a crafted pickle where a checkpoint is read (or where older versions kept one)
        target = path if damage == "pickle" else path.with_name("checkpoint.pt")
        target.write_bytes(pickle.dumps(Payload()))
    lines = []
    assert run_sweep([A, B], tmp_path, log=lines.append) == 0
    assert not MARKER.exists(), "a pickle in a run directory was executed"
    aside = [p.name for p in (tmp_path / B.run_id).glob("*.set-aside")]
    assert aside == ["checkpoint.pt.set-aside" if damage == "legacy-pickle" else checkpoint.NAME + ".set-aside"]
    assert any("set aside" in line and B.run_id in line for line in lines)
    for p in (tmp_path / B.run_id).glob("*.set-aside"):
        p.unlink()
    assert_like_reference(tmp_path, ref)


def test_checkpoint_of_another_configuration_is_refused(reference, tmp_path, monkeypatch):
    from adaptertune.errors import UserError

    path = interrupted_after_checkpoint(tmp_path, monkeypatch)
    other = tmp_path / "other"
    with monkeypatch.context() as mp:
        writes(mp, kill_at=POINTS.index("checkpoint.safetensors") + 1)
        with pytest.raises(Killed):
            run_sweep([dataclasses.replace(B, lr=1e-3)], other, log=quiet)
    (other_ckpt,) = other.glob(f"*/{checkpoint.NAME}")
    shutil.copy(other_ckpt, path)  # a checkpoint of lr 1e-3 in the run of lr 5e-4
    with pytest.raises(UserError, match="another configuration.*lr"):
        run_sweep([B], tmp_path, log=quiet)
    assert (tmp_path / B.run_id / checkpoint.NAME).exists()  # refused, not set aside or mixed
