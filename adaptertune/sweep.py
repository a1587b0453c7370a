"""Rank / seed / method specs, sweep planning, and running a sweep run by run."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

from . import distributed, lock, progress, runs
from .config import METHOD_FIELDS, METHODS, Config
from .errors import UserError


def parse_spec(spec: str, what: str, doubling: bool, minimum: int) -> list[int]:
    """`a..b` (doubling: a, 2a, 4a, ..., b; else a, a+1, ..., b) or a list `a,b,c`; sorted, unique."""
    spec = spec.replace(" ", "")
    m = re.fullmatch(r"(\d+)\.\.(\d+)", spec)
    if m:
        a, b = int(m[1]), int(m[2])
        if a < minimum or b < a:
            raise UserError(f"--{what} {spec}: need {minimum} <= start <= end")
        if not doubling:
            return list(range(a, b + 1))
        values = [a]
        while values[-1] < b:
            values.append(values[-1] * 2)
        if values[-1] != b:
            raise UserError(f"--{what} {spec}: {b} is not {a} times a power of two (a..b doubles from a to b)")
        return values
    if re.fullmatch(r"\d+(,\d+)*,?", spec):
        values = sorted({int(v) for v in spec.strip(",").split(",")})
        if values[0] < minimum:
            raise UserError(f"--{what} {spec}: values must be >= {minimum}")
        return values
    example = "4..64 or 4,12,20" if doubling else "0..2 or 0,3,7"
    raise UserError(f"--{what} {spec!r}: expected a range like {example}")


def parse_ranks(spec: str) -> list[int]:
    return parse_spec(str(spec), "rank", doubling=True, minimum=1)


def parse_seeds(spec: str) -> list[int]:
    return parse_spec(str(spec), "seeds", doubling=False, minimum=0)


def parse_methods(spec: str) -> list[str]:
    methods = [m for m in spec.replace(" ", "").split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UserError(f"--method {spec!r}: choose from {', '.join(METHODS)} (comma-separated)")
    return list(dict.fromkeys(methods))


def plan(base: Config, methods: list[str], ranks: list[int], seeds: list[int],
         vpt_tokens: list[int] | None = None) -> list[Config]:
    """Every run of the sweep: adapters and LoRA at each rank x seed, VPT at each token count (`vpt_tokens`,
    else the ranks) x seed, the others (head, full, bitfit: no capacity axis) at each seed."""
    configs = []
    for method in methods:
        axis = (vpt_tokens or ranks) if method == "vpt" else ranks
        for rank in axis if method in METHOD_FIELDS else [base.rank]:
            for seed in seeds:
                configs.append(dataclasses.replace(base, method=method, rank=rank, seed=seed).validate())
    return configs


def run_sweep(configs: list[Config], out: Path, log=progress.echo) -> int:
    """Run each configuration into `out/<run-id>`; skip finished runs, resume interrupted ones.

    This is one worker: several may run the same sweep at once (one per GPU, or one per cluster
    node on a shared file system); each trains only the runs it claims (lock.py) and skips those a
    live worker holds. A diverged run is recorded and the sweep goes on; so does a run that fails
    with an unexpected error (recorded as "failed", retried by the next sweep). Everything a user
    can get wrong is checked before the first run (preflight.py). Returns 1 if any run failed.
    Under torchrun the processes go through the sweep together, each run one DDP run (distributed.py).
    """
    from .preflight import check_sweep

    check_sweep(configs, Path(out))
    outcomes = []
    with distributed.session(configs[0].device if configs else "auto", [c.batch_size for c in configs]) as dist:
        log = dist.main_only(log)
        show = progress.enabled(any(c.quiet for c in configs)) and dist.main
        with progress.bar(len(configs), "sweep", show, unit="run", leave=True) as bar:
            for i, config in enumerate(configs, 1):
                outcomes.append(_run_one(config, Path(out) / config.run_id, f"[{i}/{len(configs)}] {config.run_id}",
                                         log))
                bar.update()
    busy = [c.run_id for c, o in zip(configs, outcomes) if o == "busy"]
    if busy:
        log(f"{len(busy)} run(s) were being trained by other workers: {', '.join(busy)}")
    return 1 if "failed" in outcomes else 0


def _run_one(config: Config, run_dir: Path, label: str, log) -> str:
    """Train one run of a sweep if it is not finished and we can claim it; returns what happened:
    "skipped", "busy" (another worker holds it), "failed", or the run's status."""
    from .train import train_run

    if runs.is_finished(run_dir):
        _tidy_finished(run_dir)
        log(f"{label}: finished, skipped")
        return "skipped"
    claim = distributed.claim(run_dir)  # lock.claim; under torchrun rank 0's, for every rank
    if claim is None:
        who = lock.holder(run_dir) or {}
        log(f"{label}: claimed by {who.get('host', '?')}:{who.get('pid', '?')}, skipped")
        return "busy"
    with claim:
        if runs.is_finished(run_dir):  # finished by another worker between our look and our claim
            log(f"{label}: finished, skipped")
            return "skipped"
        if claim.took_over:
            log(f"{label}: took over the dead claim of {claim.took_over.get('host', '?')}:"
                f"{claim.took_over.get('pid', '?')}")
        log(label)
        start = time.perf_counter()
        try:
            summary = train_run(config, run_dir, log=log)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:  # record it, keep the sweep going
            if distributed.current().active:
                raise  # the other ranks wait in a collective: end them all (torchrun does); a rerun resumes
            error = f"{e.__class__.__name__}: {e}".splitlines()[0]
            try:
                runs.write_json(run_dir / "summary.json", {"status": "failed", "error": error})
            except OSError as e2:  # a full disk must not end the sweep: the run stays unfinished
                log(f"{label}: could not record the failure ({e2.strerror or e2})")
            log(f"{label}: FAILED ({error})")
            return "failed"
    acc = summary.get("test_acc1")
    log(f"{label}: {summary['status']}" + (f", test acc {acc:.2f}" if acc is not None else "")
        + f" ({time.perf_counter() - start:.0f}s)")
    return summary["status"]


def _tidy_finished(run_dir: Path) -> None:
    """What a worker killed after writing summary.json left behind: its checkpoint, temporary files."""
    from .checkpoint import NAME

    runs.remove(run_dir / NAME)
    runs.tidy(run_dir)
