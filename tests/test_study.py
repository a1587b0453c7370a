"""Study files: expansion to the runs `train` makes, running them here, as concurrent workers and
through submitit's local executor, and `study status`."""

import collections
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import pytest

from adaptertune import cli, runs, study, study_slurm
from adaptertune.config import Config
from adaptertune.sweep import plan, parse_methods, parse_ranks, parse_seeds

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(weights="none", augment=False, epochs=1, batch_size=32, train_samples=64, test_samples=32,
            feature_samples=32, log_every=0)


def write_study(tmp_path, name="tiny", out=None, **spec) -> Path:
    """A study file on the synthetic task and vit_nano with TINY options; `spec` adds/overrides keys."""
    spec = {"out": str(out or tmp_path / "runs"), "datasets": ["synthetic"], "backbones": ["vit_nano"],
            "methods": ["head", "adapter"], "ranks": "1", "seeds": "0", "overrides": TINY, **spec}
    path = tmp_path / f"{name}.toml"
    path.write_text(_toml(spec))
    return path


def _toml(spec: dict) -> str:
    value = lambda v: json.dumps(v) if not isinstance(v, bool) else str(v).lower()
    lines, tables = [], []
    for k, v in spec.items():
        if isinstance(v, dict):
            tables.append(f"[{k}]\n" + "".join(f"{a} = {value(b)}\n" for a, b in v.items()))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            tables += [f"[[{k}]]\n" + "".join(f"{a} = {value(b)}\n" for a, b in t.items()) for t in v]
        else:
            lines.append(f"{k} = {value(v)}")
    return "\n".join(lines) + "\n\n" + "\n".join(tables)


def train_configs(argv: list[str]) -> list[Config]:
    """The configurations `adaptertune train ARGV` runs, built the way cli._train builds them."""
    args = cli.parser().parse_args(["train", *argv])
    base = Config(**{k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(Config)}})
    return plan(base, parse_methods(args.methods), parse_ranks(args.ranks), parse_seeds(args.seeds))


# -- the study file --------------------------------------------------------------------------------

def test_paper_study_is_the_reference_grid_and_its_ablations():
    s = study.load(ROOT / "analysis" / "paper_study.toml")
    pairs = {(c.dataset, c.backbone) for c in s.configs}
    assert len(pairs) == 27 and {b for _, b in pairs} == {
        "deit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"}
    assert len({c.run_id for c in s.configs}) == len(s.configs)
    # one pair's grid is exactly what `adaptertune train` runs with the same flags
    grid = train_configs(["--dataset", "pets", "--backbone", "vit_base_patch16_224", "--method", "head,full,adapter",
                          "--rank", "4..64", "--seeds", "0..2"])
    mine = {c.run_id: c for c in s.configs}
    assert all(mine[c.run_id] == c for c in grid)
    kinds = collections.Counter((c.method, c.rank, c.placement, c.init, c.blocks) for c in s.configs
                                if (c.dataset, c.backbone) == ("pets", "vit_base_patch16_224"))
    assert kinds[("adapter", 16, "block", "zero", "all")] == 3  # the grid's r16 run, not repeated by the ablations
    for option in [("attn", "zero", "all"), ("mlp", "zero", "all"), ("parallel", "zero", "all"),
                   ("block", "small", "all"), ("block", "random", "all"), ("block", "zero", "every:2")]:
        assert kinds[("adapter", 16, *option)] == 3
    assert len(s.configs) == 27 * 3 * (2 + 5) + 27 * 3 * 8  # grid + 8 ablation settings, 3 seeds each
    assert all(c.epochs == 50 and c.lr == 5e-4 and c.batch_size == 1024 for c in s.configs)  # protocol defaults


@pytest.mark.parametrize("path", sorted((ROOT / "analysis").glob("*study.toml")), ids=lambda p: p.name)
def test_every_shipped_study_expands(path):
    s = study.load(path)
    assert s.configs and len({c.run_id for c in s.configs}) == len(s.configs)


def test_small_study_is_offline():
    s = study.load(ROOT / "analysis" / "small_study.toml")
    assert {(c.dataset, c.backbone, c.weights) for c in s.configs} == {("planted", "vit_nano", "none")}
    assert 6 <= len(s.configs) <= 12


def test_ablation_axes_fixed_values_and_subsets(tmp_path):
    path = write_study(tmp_path, datasets=["synthetic", "planted"], ablation=[
        {"name": "act", "activation": ["relu", "identity"], "scale": 0.5, "ranks": [4], "datasets": ["planted"]}])
    s = study.load(path)
    ablated = [c for c in s.configs if c.activation != "gelu"]
    assert sorted((c.dataset, c.activation, c.scale, c.rank) for c in ablated) == [
        ("planted", "identity", 0.5, 4), ("planted", "relu", 0.5, 4)]
    assert len(s.configs) == 2 * 2 + 2


def test_whole_numbers_for_float_options_are_the_runs_train_makes(tmp_path):
    s = study.load(write_study(tmp_path, methods="head", overrides={"lr": 1, "warmup_epochs": 0, "scale": 2}))
    (mine,) = s.configs
    (theirs,) = train_configs(["--dataset", "synthetic", "--backbone", "vit_nano", "--method", "head",
                               "--lr", "1", "--warmup-epochs", "0", "--scale", "2"])
    assert mine == theirs and mine.config_key() == theirs.config_key() and isinstance(mine.lr, float)


@pytest.mark.parametrize("spec,message", [
    ({"ranks": "4..60"}, "not 4 times a power of two"),
    ({"methods": ["head", "dora"]}, "--method"),
    ({"overrides": {"lrr": 0.1}}, "'lrr' is not an option"),
    ({"overrides": {"rank": 8}}, "the study's datasets"),
    ({"overrides": {"epochs": "ten"}}, "epochs = 'ten' should be a int"),
    ({"overrides": {"placement": "inside"}}, "--placement"),
    ({"ablation": [{"name": "x", "init": []}]}, "empty list"),
    ({"ablation": [{"name": "x", "methods": ["head"]}]}, "'methods' is not an option"),
    ({"datasets": []}, "non-empty list"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_bad_study_files_are_one_line_exit_2(tmp_path, capsys, spec, message):
    path = write_study(tmp_path, **spec)
    assert cli.main(["study", "status", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err and "Traceback" not in err


def test_an_ablation_that_changes_a_shared_option_never_answers_for_the_grid_run(tmp_path):
    path = write_study(tmp_path, ablation=[{"name": "x", "epochs": 3, "ranks": [1]}])  # the grid's r1, 3 epochs
    assert Config(epochs=3).run_id != Config().run_id  # the run id carries the identity
    assert sorted(c.epochs for c in study.load(path).configs) == [1, 1, 3]


def test_unreadable_study_files(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("out = [")
    for path in (tmp_path / "missing.toml", tmp_path / "bad.toml"):
        assert cli.main(["study", "run", str(path)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


# -- running ----------------------------------------------------------------------------------------

def test_study_run_here_writes_the_runs_train_writes(tmp_path, capsys):
    path = write_study(tmp_path)
    assert cli.main(["study", "run", str(path)]) == 0
    expected = train_configs(["--dataset", "synthetic", "--backbone", "vit_nano", "--method", "head,adapter",
                              "--rank", "1", *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()
                                                      if k != "augment"), []), "--no-augment"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(c.run_id for c in expected)
    for c in expected:
        recorded = json.loads((tmp_path / "runs" / c.run_id / "config.json").read_text())
        assert Config.from_dict(recorded).identity() == c.identity()
        assert runs.is_finished(tmp_path / "runs" / c.run_id)
    capsys.readouterr()
    assert cli.main(["study", "run", str(path)]) == 0  # a second time: nothing left to train
    assert capsys.readouterr().out.count("finished, skipped") == 2


def _trained(output: str) -> collections.Counter:
    """How many times each run's first epoch was trained, from the workers' prefixed lines."""
    return collections.Counter(re.findall(r"\| (\S+) epoch 1/", output))


@pytest.mark.parametrize("workers", [2, 3])
def test_concurrent_local_workers_train_every_run_exactly_once(tmp_path, workers):
    path = write_study(tmp_path, ranks="1..4")  # 4 runs
    lines = []
    assert study.run_workers(study.load(path), study.devices(None, workers), log=lines.append) == 0
    configs = study.load(path).configs
    assert _trained("\n".join(lines)) == {c.run_id: 1 for c in configs}
    for c in configs:
        rows = runs.read_lines(tmp_path / "runs" / c.run_id / "metrics.jsonl")
        assert sorted((m["epoch"], m["split"]) for m in rows) == [(1, "test"), (1, "train"), (1, "val")]
    assert len({line.split("|")[0] for line in lines if "|" in line}) == workers


def test_worker_devices():
    assert study.devices("0,2", None) == [("cuda", {"CUDA_VISIBLE_DEVICES": "0"}), ("cuda", {"CUDA_VISIBLE_DEVICES": "2"})]
    assert [d for d, _ in study.devices(None, 3)] == ["cpu"] * 3
    for gpus in ("0,0", "a", ""):
        with pytest.raises(study.UserError, match="--gpus"):
            study.devices(gpus, None)


# -- SLURM through submitit ---------------------------------------------------------------------------

def test_study_through_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    s = study.load(write_study(tmp_path))
    jobs = study_slurm.submit(s, cluster="local", workers=1, gpus=0, time="0:10:00", log=lambda _: None)
    assert [j.result() for j in jobs] == [0]
    assert all(runs.is_finished(s.run_dir(c)) for c in s.configs)
    assert list((tmp_path / "runs" / "slurm").glob("*_log.out"))  # logs beside the runs
    assert study_slurm.submit(s, cluster="local", gpus=0, log=lambda _: None) == []  # nothing left


def test_preempted_worker_requeues_and_the_run_resumes_from_its_checkpoint(tmp_path):
    pytest.importorskip("submitit")
    s = study.load(write_study(tmp_path, methods=["adapter"], ranks="1",
                               overrides={**TINY, "epochs": 4, "train_samples": 600}))
    run_dir = s.run_dir(s.configs[0])
    (job,) = study_slurm.submit(s, cluster="local", workers=1, gpus=0, log=lambda _: None)
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoint.*")) and time.time() < deadline:
        time.sleep(0.02)
    assert not runs.is_finished(run_dir), "the run finished before it could be preempted; make it longer"
    preempt(job)
    assert job.result() == 0
    log = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm").glob("*_log.*"))
    assert "resuming" in log and "Requeued" in log
    rows = runs.read_lines(run_dir / "metrics.jsonl")
    assert sorted(m["epoch"] for m in rows if m["split"] == "train") == [1, 2, 3, 4]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def preempt(job) -> None:
    """What SLURM does on preemption or near the time limit: USR2 to the job's task process, which
    submitit's handler turns into checkpoint + requeue (the local executor's own `_interrupt`
    signals its controller process instead, which does not forward it)."""
    import os
    import signal

    def descendants(pid):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children] + [d for c in children for d in descendants(int(c))]

    tasks = [p for p in descendants(job._process.pid) if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)


def test_slurm_without_submitit_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert cli.main(["study", "run", str(write_study(tmp_path)), "--slurm", "--partition", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[cluster]"' in err


@pytest.mark.parametrize("text,minutes", [("4:00:00", 240), ("1-02:30:00", 1590), ("90", 90), ("0:30", 30)])
def test_slurm_time(text, minutes):
    assert study_slurm.parse_time(text) == minutes


def test_slurm_submits_a_job_array_of_workers_with_the_flags_resources(tmp_path, capsys):
    mocked_slurm = pytest.importorskip("submitit.slurm.test_slurm").mocked_slurm  # sbatch mocked by submitit
    path = write_study(tmp_path, ranks="1..2")  # 3 runs
    with mocked_slurm():
        assert cli.main(["study", "run", str(path), "--slurm", "--partition", "gpu", "--time", "4:00:00",
                         "--max-parallel", "2", "--mem-gb", "32"]) == 0
    (script,) = (tmp_path / "runs" / "slurm").glob("*_submission.sh")
    text = script.read_text()
    for line in ("--array=0-1%2", "--partition=gpu", "--time=240", "--gpus-per-node=1", "--mem=32GB",
                 "--signal=USR2@120", f"--output={tmp_path / 'runs' / 'slurm'}/"):
        assert f"#SBATCH {line}" in text
    assert "2 workers submitted for 3 unfinished runs" in capsys.readouterr().out


def test_slurm_needs_a_partition(tmp_path):
    pytest.importorskip("submitit")
    with pytest.raises(study.UserError, match="--partition"):
        study_slurm.submit(study.load(write_study(tmp_path)))


# -- status -------------------------------------------------------------------------------------------

def test_status_counts_done_failed_running_pending_with_reasons_and_eta(tmp_path, capsys):
    path = write_study(tmp_path, ranks="1..4", seeds="0")  # head, r1, r2, r4
    s = study.load(path)
    head, r1, r2, r4 = (s.run_dir(c) for c in s.configs)
    runs.write_json(head / "summary.json", {"status": "complete", "train_seconds": 100.0})
    runs.write_json(r1 / "summary.json", {"status": "failed", "error": "RuntimeError: CUDA out of memory"})
    runs.write_lines(r4 / "metrics.jsonl", [{"epoch": 1, "split": "train"}])  # interrupted, resumable
    claim = hold_claim(r2)
    st = study.status(s)
    assert [st.count(k) for k in study.STATES] == [1, 1, 1, 1]
    assert st.eta_seconds() == pytest.approx(300.0)  # 3 runs left at the one finished run's 100 s, 1 in flight
    assert cli.main(["study", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"failed: {r1.name}: RuntimeError: CUDA out of memory" in out
    assert f"running: {r2.name}" in out and "resumable" not in out
    assert re.search(r"all\s+1\s+1\s+1\s+1", out) and "ETA: 5m00s" in out
    claim.release()
    assert study.status(s).count("running") == 0 and study.status(s).count("pending") == 2


def hold_claim(run_dir: Path):
    """Claim `run_dir` for this (live) process, as sweep.run_sweep does before training it."""
    from adaptertune import lock

    claim = lock.claim(run_dir)
    assert claim is not None
    return claim
