"""The command line: `adaptertune train | analyze {spectrum,capacity,significance} | report | demo | predict | paper`.

Errors a user can cause end in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import sys
from pathlib import Path

from .analysis.tables import ANALYSIS_MODULES
from .config import METHODS, PRESETS, Config
from .errors import UserError

METRICS = ("test_acc1", "test_acc5", "best_val_acc1")  # what a run's summary measures, in percent
# Analysis options' bounds: (low, high, low included, high included).
ANALYSIS_RANGES = {
    "delta": (0.0, 100.0, False, True), "horizon": (1.0, 1e6, True, True), "alpha": (0.0, 1.0, False, False),
    "energy_target": (0.0, 1.0, False, True), "bootstrap": (10, 10**7, True, True), "seed": (0, 2**32 - 1, True, True),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (exit 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"adaptertune: error: {message} (see {self.prog} --help)\n")
_PRESET_FIELDS = tuple(dict.fromkeys(k for preset in PRESETS.values() for k in preset))


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train adapters / baselines over a rank x seed sweep",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs", help="sweep folder; each run gets <out>/<run-id>/")
    p.add_argument("--rank", dest="ranks", default=str(Config.rank),
                   help="rank spec: 4..64 (doubling: 4,8,16,32,64) or a list 4,12,20")
    p.add_argument("--seeds", "--seed", dest="seeds", default="0", help="seed spec: 0..2 (0,1,2) or a list")
    p.add_argument("--method", dest="methods", default="adapter",
                   help="one or several of " + ",".join(METHODS))
    p.add_argument("--vpt-tokens", default=None, help="VPT's capacity axis, a spec like --rank (default: the --rank "
                   "spec); VPT runs record it as their rank")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a published adapter variant: sets " + ", ".join(_PRESET_FIELDS) + " unless given")
    skip = {"rank", "seed", "method"}
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        # preset fields: absent unless given, so that a --preset fills in exactly what was not
        default = argparse.SUPPRESS if f.name in _PRESET_FIELDS else f.default
        help = f.metadata["help"] + (f" (default: {f.default})" if f.name in _PRESET_FIELDS else "")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, type=kind, default=default, help=help)
    p.set_defaults(func=_train)


def _train(args) -> int:
    from .sweep import plan, parse_methods, parse_ranks, parse_seeds, run_sweep

    tokens = parse_ranks(args.vpt_tokens) if args.vpt_tokens else None
    configs = plan(base_config(args), parse_methods(args.methods), parse_ranks(args.ranks), parse_seeds(args.seeds),
                   tokens)
    return run_sweep(configs, Path(args.out))


def _check_analysis(args) -> None:
    """The analyses' inputs, before any is read: options in range, paths that exist, a readable claims file."""
    source = Path(args.runs)
    csv_ok = getattr(args, "analysis", None) == "significance"
    if not source.exists():
        raise UserError(f"{source}: no such folder")
    if not source.is_dir() and not (csv_ok and source.suffix.lower() == ".csv"):
        raise UserError(f"{source}: a file, not a folder of runs" + (" (or a .csv table)" if csv_ok else ""))
    if args.out is not None:
        from .preflight import check_out

        check_out(Path(args.out))
    for name, (lo, hi, lo_in, hi_in) in ANALYSIS_RANGES.items():
        v = getattr(args, name, None)
        if v is None:
            continue
        ok = math.isfinite(v) and (lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)
        if not ok:
            brackets = ("[" if lo_in else "(") + f"{lo}, {hi}" + ("]" if hi_in else ")")
            raise UserError(f"--{name.replace('_', '-')} must be in {brackets}, got {v}")
    metric = getattr(args, "metric", None)
    if metric is not None and source.is_dir() and metric not in METRICS:
        raise UserError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    if getattr(args, "claims", None) is not None:
        _check_claims_file(Path(args.claims))


def _check_claims_file(path: Path) -> None:
    """A claims file that exists, is UTF-8 TOML, and whose numbers (bounds, alpha, k, m) are finite."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise UserError(f"--claims {path}: " + ("a folder, not a file" if path.is_dir() else "no such file"))
    try:
        doc = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"--claims {path}: unreadable ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--claims {path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--claims {path}: not valid TOML ({e})".splitlines()[0]) from None
    tables = [("file", doc)] + [(f"claim {i + 1}", c) for i, c in enumerate(doc.get("claim") or [])
                                if isinstance(c, dict)]
    for where, table in tables:
        for key, v in table.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--claims {path}: {where}: field {key!r} must be a finite number, got {v}")


def base_config(args) -> Config:
    """The Config of `train`'s arguments: the flags given, then the --preset's values, then the defaults."""
    names = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return Config(**{**(PRESETS[args.preset] if args.preset else {}), **given})


def _analysis_parser(sub, name: str) -> None:
    """A subcommand served by its analysis module (`ANALYSIS_MODULES`): add_arguments() and run_command()."""
    module = importlib.import_module(f"adaptertune.analysis.{ANALYSIS_MODULES.get(name, name)}")
    q = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("runs", type=Path, help="a folder of run directories (searched recursively)")
    q.add_argument("--out", type=Path, default=None, help="output folder (default: RUNS/analysis)")
    module.add_arguments(q)
    q.set_defaults(func=lambda args: _check_analysis(args) or module.run_command(args))


def _demo_parser(sub) -> None:
    from . import demo

    p = sub.add_parser("demo", help=demo.__doc__.strip().splitlines()[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo"), help="runs go to OUT/runs, the report to OUT/report")
    p.add_argument("--planted-rank", type=int, default=4, help="rank k* of the planted shift")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke version (fewer ranks, seeds, epochs)")
    p.set_defaults(func=lambda args: demo.run(args.out, planted_rank=args.planted_rank, quick=args.quick))


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k class names of image files under a trained run's model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run directory (holds adapter.safetensors)")
    p.add_argument("images", type=Path, nargs="+", help="image files")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.set_defaults(func=lambda args: importlib.import_module("adaptertune.inference").predict_command(args))


def _paper_parser(sub) -> None:
    from .analysis import paper

    p = sub.add_parser("paper", help="LaTeX tables (booktabs) and PDF figures of a study, with a main.tex",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", type=Path, help="a folder of run directories (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("paper"), help="folder for tables/, figures/ and main.tex")
    paper.add_arguments(p)
    p.set_defaults(func=paper.run_command)


def _study_parser(sub) -> None:
    study = sub.add_parser("study", help="run a study file (TOML) here, on local workers or on SLURM; its status")
    cmds = study.add_subparsers(dest="study_command", required=True)
    r = cmds.add_parser("run", help="run every run of a study (finished ones are skipped, interrupted ones resumed)")
    s = cmds.add_parser("status", help="the study's runs by state (done, running, failed, pending) and an ETA")
    for q in (r, s):
        q.add_argument("study", type=Path, help="the study file, e.g. analysis/paper_study.toml")
        q.add_argument("--out", type=Path, default=None, help="output root (default: the study's `out`)")
    r.add_argument("--device", default=None, help="device of every run (default: the study's, else auto)")
    where = r.add_mutually_exclusive_group()
    where.add_argument("--gpus", default=None, help="one worker per GPU, e.g. 0,1,2,3")
    where.add_argument("--workers", type=int, default=None, help="N concurrent worker processes on the CPU")
    where.add_argument("--slurm", action="store_true", help="submit a job array of workers through submitit")
    g = r.add_argument_group("SLURM (--slurm; default: the study's [slurm] table)")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--time", default=None, help="time limit per job, H:MM:SS (jobs requeue themselves at it)")
    g.add_argument("--max-parallel", type=int, default=None, help="array tasks running at once")
    g.add_argument("--jobs", dest="slurm_workers", type=int, default=None,
                   help="array tasks in all (default: max-parallel, at most the unfinished runs)")
    g.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per job (0: CPU runs)")
    g.add_argument("--cpus-per-job", type=int, default=None, help="CPUs per job")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per job")
    r.set_defaults(func=_study_run)
    s.set_defaults(func=_study_status)


def _study_run(args) -> int:
    from . import study

    s = study.load(args.study, out=args.out)
    if args.slurm:
        from . import study_slurm

        study_slurm.submit(s, partition=args.partition, time=args.time, max_parallel=args.max_parallel,
                           workers=args.slurm_workers, gpus=args.gpus_per_job, cpus=args.cpus_per_job,
                           mem_gb=args.mem_gb)
        return 0
    if args.gpus is not None or args.workers is not None:
        return study.run_workers(s, study.devices(args.gpus, args.workers))
    return study.run(s, device=args.device)


def _study_status(args) -> int:
    from . import study

    print(study.status(study.load(args.study, out=args.out)).text())
    return 0
def _export_parser(sub) -> None:
    p = sub.add_parser("export-peft", help="write a LoRA run in PEFT's format (adapter_config.json + "
                       "adapter_model.safetensors) for peft.PeftModel.from_pretrained")
    p.add_argument("run", type=Path, help="a finished LoRA run directory")
    p.add_argument("out", type=Path, help="the folder to write")

    def export(args):
        from .peft_export import export_peft

        for f in export_peft(args.run, args.out):
            print(f)
    p.set_defaults(func=export)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="adaptertune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    analyze = sub.add_parser("analyze", help="analyse finished runs").add_subparsers(dest="analysis", required=True)
    for name in ANALYSIS_MODULES:
        _analysis_parser(analyze, name)
    _analysis_parser(sub, "report")
    _demo_parser(sub)
    _predict_parser(sub)
    _paper_parser(sub)
    _study_parser(sub)
    _export_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"adaptertune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adaptertune: interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
