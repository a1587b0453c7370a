"""The command line: `adaptertune train | analyze {spectrum,capacity,significance} | report | demo | predict | paper`.

Errors a user can cause end in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

from .analysis.tables import ANALYSIS_MODULES
from .config import METHODS, PRESETS, Config
from .errors import UserError

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
    q.set_defaults(func=module.run_command)


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
    p = argparse.ArgumentParser(prog="adaptertune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    analyze = sub.add_parser("analyze", help="analyse finished runs").add_subparsers(dest="analysis", required=True)
    for name in ANALYSIS_MODULES:
        _analysis_parser(analyze, name)
    _analysis_parser(sub, "report")
    _demo_parser(sub)
    _predict_parser(sub)
    _paper_parser(sub)
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
