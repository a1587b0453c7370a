"""Study files: one TOML file that says what a sweep of sweeps is, expanded to the `Config`s that
`adaptertune train` would run, into the same run directories `<out>/<config.run_id>`.

    out = "runs/paper"                       # the output root (relative to the current directory)
    datasets = ["cifar10", "folder:data/tiny-imagenet"]
    backbones = ["vit_small_patch16_224"]
    methods = ["head", "full", "adapter"]    # or "head,full,adapter"
    ranks = "4..64"                          # a rank spec (sweep.parse_ranks) or a list of ints
    seeds = "0..2"                           # a seed spec or a list
    [overrides]                              # Config fields shared by every run (default: the protocol)
    epochs = 50
    [[ablation]]                             # adapter runs beside the grid, one block per ablation
    name = "placement"
    placement = ["attn", "mlp", "parallel"]  # a list is an axis, a single value a fixed option
    # optional: datasets, backbones, ranks (default: the overrides' rank), seeds (default: the study's)
    [slurm]                                  # defaults of `study run --slurm` (study_slurm.py)
    partition = "gpu"

A run that two parts of the study both name (an ablation's default value is the grid's run) is run
once. The study runs here (one run after another), as one worker process per device, each going
through `sweep.run_sweep`, whose run claim makes workers skip runs another live worker holds, or on
SLURM (study_slurm.py). `status` reads the run directories: done, running, failed, pending.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from . import sweep
from .config import Config
from .errors import UserError

AXES = ("datasets", "backbones", "methods", "ranks", "seeds")
TOP = ("name", "out", *AXES, "overrides", "ablation", "slurm")
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
NOT_OVERRIDES = ("dataset", "backbone", "method", "rank", "seed")  # the study's axes say these
ABLATION_AXES = ("name", "datasets", "backbones", "ranks", "seeds")  # an ablation's own; the rest are Config fields


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    out: Path
    configs: tuple[Config, ...]
    slurm: dict  # the [slurm] table: defaults of `study run --slurm`

    def run_dir(self, config: Config) -> Path:
        return self.out / config.run_id


def load(path: Path, out: Path | None = None) -> Study:
    """Read and expand a study file; raises UserError naming the file and what is wrong."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read the study file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid TOML file ({e})") from None
    unknown = sorted(set(spec) - set(TOP))
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (a study has {', '.join(TOP)})")
    if out is None and "out" not in spec:
        raise UserError(f"{path}: no `out` (the output root of the study's run directories)")
    slurm = spec.get("slurm", {})
    if not isinstance(slurm, dict):
        raise UserError(f"{path}: [slurm] must be a table")
    configs = expand(spec, where=str(path))
    return Study(path=path, name=str(spec.get("name", path.stem)),
                 out=Path(out if out is not None else spec["out"]).absolute(), configs=tuple(configs), slurm=slurm)


def expand(spec: dict, where: str = "study") -> list[Config]:
    """Every run of a study spec (a parsed TOML dict), deduplicated by run directory, in order:
    per (dataset, backbone) pair the grid (sweep.plan), then each ablation block."""
    for key in ("datasets", "backbones"):
        if key not in spec:
            raise UserError(f"{where}: no `{key}`")
    datasets, backbones = _names(spec["datasets"], f"{where}: datasets"), _names(spec["backbones"], f"{where}: backbones")
    methods = _parsed(sweep.parse_methods, spec.get("methods", "adapter"), f"{where}: methods")
    ranks = _parsed(sweep.parse_ranks, spec.get("ranks", Config.rank), f"{where}: ranks")
    seeds = _parsed(sweep.parse_seeds, spec.get("seeds", 0), f"{where}: seeds")
    overrides = _options(spec.get("overrides", {}), f"{where} [overrides]", axes=False)
    blocks = spec.get("ablation", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise UserError(f"{where}: ablations are [[ablation]] tables")

    configs = []
    for dataset in datasets:
        for backbone in backbones:
            base = _config(overrides, where, dataset=dataset, backbone=backbone)
            configs += sweep.plan(base, methods, ranks, seeds)
    for i, block in enumerate(blocks, 1):
        name = f"{where} [[ablation]] {block.get('name', i)!s}"
        fixed, varied = _options({k: v for k, v in block.items() if k not in ABLATION_AXES}, name, axes=True)
        b_ranks = _parsed(sweep.parse_ranks, block["ranks"], f"{name}: ranks") if "ranks" in block else None
        b_seeds = _parsed(sweep.parse_seeds, block["seeds"], f"{name}: seeds") if "seeds" in block else seeds
        for dataset in _names(block.get("datasets", datasets), f"{name}: datasets"):
            for backbone in _names(block.get("backbones", backbones), f"{name}: backbones"):
                for values in _product(varied):
                    base = _config({**overrides, **fixed, **values}, name, dataset=dataset, backbone=backbone)
                    configs += sweep.plan(base, ["adapter"], b_ranks or [base.rank], b_seeds)
    return _dedupe(configs)


def _config(options: dict, where: str, **axes) -> Config:
    try:
        return Config(**options, **axes).validate()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _options(table, where: str, axes: bool):
    """Check a table of Config fields: known names, values of the field's type (an int where a float
    is wanted becomes that float, as `train --lr 1` gives 1.0). With `axes`, split it into fixed
    values and lists (the axes of an ablation); else return it."""
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table of Config fields")
    fixed, varied = {}, {}
    for key, value in table.items():
        if key not in FIELDS or key in NOT_OVERRIDES:
            hint = " (the study's datasets/backbones/methods/ranks/seeds say that)" if key in NOT_OVERRIDES else ""
            raise UserError(f"{where}: {key!r} is not an option here{hint}")
        if axes and isinstance(value, list):
            if not value:
                raise UserError(f"{where}: {key} is an empty list")
            varied[key] = [_value(key, v, where) for v in value]
        else:
            fixed[key] = _value(key, value, where)
    return (fixed, varied) if axes else fixed


def _value(key: str, value, where: str):
    kind = str(FIELDS[key].type)
    ok = {"int": int, "float": (int, float), "bool": bool, "str": str}[kind]
    if isinstance(value, bool) and kind != "bool" or not isinstance(value, ok):
        raise UserError(f"{where}: {key} = {value!r} should be a {kind}")
    return float(value) if kind == "float" else value


def _product(varied: dict) -> list[dict]:
    combos = [{}]
    for key, values in varied.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def _names(value, where: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise UserError(f"{where}: expected a non-empty list of names")
    return list(dict.fromkeys(names))


def _parsed(parse, value, where: str) -> list:
    """`parse` (a sweep.parse_* function) of a TOML value: a spec "4..64" / "head,full", a number or a list."""
    if isinstance(value, list) and value and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        value = ",".join(map(str, value))
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise UserError(f"{where}: expected a spec like \"4..64\", a name, a number or a list, got {value!r}")
    try:
        return parse(str(value))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _dedupe(configs: list[Config]) -> list[Config]:
    """One config per run directory: a run named by the grid and by an ablation is run once (the run id
    holds the config key, so equal ids are equal configurations)."""
    seen: dict[str, Config] = {}
    for c in configs:
        seen.setdefault(c.run_id, c)
    return list(seen.values())


# -- running here and as local workers --------------------------------------------------------------

def run(study: Study, device: str | None = None, log=print) -> int:
    """Every run of the study, one after another, through `sweep.run_sweep` (finished runs are
    skipped, interrupted ones resumed, runs claimed by another live worker left to it)."""
    configs = [dataclasses.replace(c, device=device) if device else c for c in study.configs]
    log(f"study {study.name}: {len(configs)} runs -> {study.out}")
    return sweep.run_sweep(configs, study.out, log=log)


def devices(gpus: str | None, workers: int | None) -> list[tuple[str, dict]]:
    """(Config.device, extra environment) for each worker: `--gpus 0,1` (one per GPU, each seeing only
    its own through CUDA_VISIBLE_DEVICES) or `--workers N` on the CPU (the cores split between them)."""
    if gpus is not None:
        ids = [g for g in gpus.replace(" ", "").split(",") if g]
        if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise UserError(f"--gpus {gpus!r}: expected distinct GPU indices like 0,1,2,3")
        return [("cuda", {"CUDA_VISIBLE_DEVICES": g}) for g in ids]
    if workers is None or workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return [("cpu", {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})] * workers


def run_workers(study: Study, workers: list[tuple[str, dict]], log=print) -> int:
    """One `study run` subprocess per worker, all on the same study, their lines prefixed with the
    worker's name; returns the highest exit status."""
    procs = []
    for i, (device, env) in enumerate(workers):
        label = f"gpu{env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else f"cpu{i}"
        cmd = [sys.executable, "-m", "adaptertune.cli", "study", "run", str(study.path),
               "--out", str(study.out), "--device", device]
        p = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1)
        t = threading.Thread(target=lambda p=p, label=label: [log(f"{label}| {line.rstrip()}") for line in p.stdout],
                             daemon=True)
        t.start()
        procs.append((p, t))
    log(f"study {study.name}: {len(procs)} workers on {len(study.configs)} runs -> {study.out}")
    try:
        codes = [p.wait() for p, _ in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; let them record and stop
        for p, _ in procs:
            p.wait()
        raise
    for _, t in procs:
        t.join()
    return max(codes)


# -- status -------------------------------------------------------------------------------------------

STATES = ("done", "running", "failed", "pending")


@dataclass(frozen=True)
class RunState:
    config: Config
    state: str        # one of STATES
    detail: str = ""  # a failure's reason, a claim's holder, "diverged", "resumable after epoch k"
    seconds: float | None = None  # train_seconds of a finished run


@dataclass(frozen=True)
class StudyStatus:
    study: Study
    runs: tuple[RunState, ...]

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)

    def eta_seconds(self) -> float | None:
        """Run time still needed, from finished runs' train_seconds: each unfinished run is estimated
        by the mean of finished runs of its (dataset, backbone, method), else of its method, else of all;
        divided by the runs in flight now (at least 1). None before any run has finished."""
        done = [r for r in self.runs if r.seconds is not None]
        if not done:
            return None
        keys = (lambda c: (c.dataset, c.backbone, c.method), lambda c: c.method, lambda c: None)
        means = [{} for _ in keys]
        for table, key in zip(means, keys):
            for r in done:
                table.setdefault(key(r.config), []).append(r.seconds)
        total = 0.0
        for r in self.runs:
            if r.state in ("pending", "running", "failed"):
                total += next(sum(v) / len(v) for table, key in zip(means, keys) if (v := table.get(key(r.config))))
        return total / max(1, self.count("running"))

    def text(self) -> str:
        lines = [f"study {self.study.name}: {len(self.runs)} runs in {self.study.out}"]
        pairs = list(dict.fromkeys((r.config.dataset, r.config.backbone) for r in self.runs))
        head = ("dataset", "backbone", *STATES)
        rows = [[d, b, *(str(sum(r.state == s for r in self.runs if (r.config.dataset, r.config.backbone) == (d, b)))
                         for s in STATES)] for d, b in pairs]
        rows.append(["all", "", *(str(self.count(s)) for s in STATES)])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        for row in [head, *rows]:
            lines.append("  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths))))
        for state in ("running", "failed"):
            for r in self.runs:
                if r.state == state:
                    lines.append(f"{state}: {r.config.run_id}: {r.detail}")
        diverged = sum(r.detail == "diverged" for r in self.runs)
        if diverged:
            lines.append(f"{diverged} of the done runs diverged (recorded, not rerun)")
        eta = self.eta_seconds()
        left = len(self.runs) - self.count("done")
        if left == 0:
            lines.append("all runs done")
        elif eta is None:
            lines.append(f"ETA: unknown until a run finishes ({left} runs to go)")
        else:
            lines.append(f"ETA: {_duration(eta)} for {left} runs at {max(1, self.count('running'))} in flight "
                         "(from finished runs' train_seconds; startup and evaluation not included)")
        return "\n".join(lines)


def status(study: Study) -> StudyStatus:
    return StudyStatus(study, tuple(run_state(c, study.run_dir(c)) for c in study.configs))


def run_state(config: Config, run_dir: Path) -> RunState:
    """A run's state from its directory: a finished summary is done, a failed one failed (its error),
    a live claim running; anything else pending (noting a checkpoint to resume from)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        summary = {}
    status = summary.get("status") if isinstance(summary, dict) else None
    holder = claim_holder(run_dir)
    if status in ("complete", "diverged"):
        seconds = summary.get("train_seconds")
        return RunState(config, "done", "diverged" if status == "diverged" else "",
                        float(seconds) if isinstance(seconds, (int, float)) else None)
    if holder:
        return RunState(config, "running", holder)
    if status == "failed":
        return RunState(config, "failed", str(summary.get("error") or "no reason recorded"))
    epochs = [m.get("epoch", 0) for m in _lines(run_dir / "metrics.jsonl")]
    return RunState(config, "pending", f"resumable after epoch {max(epochs)}" if epochs else "")


def claim_holder(run_dir: Path) -> str:
    """Who holds the run's claim (lock.py, taken by sweep.run_sweep), if a live worker does; else ""."""
    from . import lock

    info = lock.holder(run_dir)
    if info is None:
        return ""
    return f"{info.get('host', '?')} pid {info.get('pid', '?')} since {info.get('started', '?')}"


def _lines(path: Path) -> list[dict]:
    from .runs import read_lines

    return read_lines(path) if path.exists() else []


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
