"""The run directory: the contract between the trainer and the analyses (DESIGN.md).

    <run>/config.json          Config.to_dict() plus "env" (package versions, git commit)
    <run>/metrics.jsonl        one JSON object per event (epoch, split, loss, acc1, acc5, lr, ...)
    <run>/summary.json         written last: {"status": "complete"|"diverged"|"failed", "test_acc1", ...}
    <run>/adapter.safetensors  trainable weights only, the config in its metadata
    <run>/features.safetensors "frozen", "adapted" (n, d) float32: the pooled last-block output before
                               the final norm, where adapters add their shift (features.py);
                               "frozen.prelogits", "adapted.prelogits" (n, d): what the head reads;
                               "labels", "indices" (n,) int64; optionally "frozen.block{i}", "adapted.block{i}"

    <run>/checkpoint.safetensors  while it trains: the last epoch's state (checkpoint.py); removed
                               once summary.json is written
    <run>/claim.json           while a worker trains it: who (lock.py)

The directory is named `Config.run_id`: readable fields, then `config_key()` (a digest of every
other result-changing field), then the seed; `check_identity` refuses to skip or resume a run whose
recorded config.json says otherwise. Every file is written to a temporary name and renamed, so a
crash never leaves half a file; `tidy` removes the temporary files a killed writer left behind.
Imports no torch: the analyses read runs with numpy only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import METHOD_FIELDS, Config
from .errors import UserError

FINISHED = ("complete", "diverged")  # a sweep does not rerun these; "failed" is retried


# -- atomic writes ---------------------------------------------------------------------------------

def atomic_write(path: Path, write) -> None:
    """Call `write(binary_file)` on a temporary file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(_plain(obj), indent=2, allow_nan=False) + "\n")


def write_lines(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(_plain(r), allow_nan=False) + "\n" for r in rows))


def append_line(path: Path, row: dict) -> None:
    """Append one JSON line; a torn last line from a crash is ignored by `read_lines`."""
    with open(path, "a") as f:
        f.write(json.dumps(_plain(row), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove(path: Path) -> None:
    """Remove a file if it is there (a write point of its own: the fault tests count it)."""
    Path(path).unlink(missing_ok=True)


def tidy(run_dir: Path) -> None:
    """Remove the temporary files that writers killed mid-write left in `run_dir`."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def set_aside(path: Path) -> Path:
    """Rename an unusable file out of the way (kept for inspection); returns its new name."""
    path = Path(path)
    aside = path.with_name(path.name + ".set-aside")
    os.replace(path, aside)
    return aside


def check_identity(run_dir: Path, config: Config) -> None:
    """Raise UserError if `run_dir` holds a config.json recorded with another identity than `config`'s."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return
    try:
        recorded = Config.from_dict(json.loads(path.read_text())).identity()
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{run_dir}: unreadable config.json ({e.__class__.__name__}); move the run away") from None
    differ = identity_diff(recorded, config.identity())
    if differ:
        raise UserError(f"{run_dir}: recorded with another configuration: {differ}; move it away or use another --out")


def identity_diff(recorded: dict, wanted: dict) -> str:
    """The fields where two identities differ, as 'name RECORDED (now WANTED), ...'; '' if none."""
    differ = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    return ", ".join(f"{k} {recorded.get(k)!r} (now {wanted.get(k)!r})" for k in differ)


def read_lines(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by a crash: everything before it is intact
    return rows


def save_arrays(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    blob = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
    atomic_write(path, lambda f: f.write(blob))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _plain(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- reading and discovery -------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    path: Path
    config: dict
    summary: dict

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def key(self) -> str:
        """`Config.config_key()` of this run: equal exactly for the seeds of one configuration."""
        return Config.from_dict(self.config).config_key()

    def features(self) -> dict[str, np.ndarray]:
        """The arrays of features.safetensors; raises UserError if missing or unreadable."""
        path = self.path / "features.safetensors"
        if not path.exists():
            raise UserError(f"{self.path}: no features.safetensors")
        try:
            return load_arrays(path)
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"{path}: unreadable ({e})") from None

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return read_lines(path) if path.exists() else []

    def row(self) -> dict:
        """One tidy row: what varies in a sweep and what it measured."""
        c, s = self.config, self.summary
        return {
            "run": self.id, "path": str(self.path),
            "dataset": c.get("dataset"), "backbone": c.get("backbone"), "method": c.get("method"),
            "rank": c.get("rank") if "rank" in METHOD_FIELDS.get(c.get("method"), ()) else None,  # the capacity axis
            **{k: c.get(k) for k in ("placement", "blocks", "init", "activation", "scale")},
            "seed": c.get("seed"), "key": self.key, "status": s.get("status"),
            **{k: s.get(k) for k in ("test_acc1", "test_acc5", "best_val_acc1", "trainable_params",
                                     "total_params", "trainable_fraction", "train_seconds")},
        }


@dataclass
class Discovery:
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (run dir, why)

    def rows(self) -> list[dict]:
        return [r.row() for r in self.runs]

    def skipped_text(self) -> str:
        return "\n".join(f"skipped {p}: {why}" for p, why in self.skipped)


REQUIRED = ("dataset", "backbone", "method", "seed")  # what every analysis groups or pairs runs by
STATUSES = ("complete", "diverged", "failed")
MEASURES = ("test_acc1", "test_acc5", "test_loss", "best_val_acc1", "trainable_params", "total_params",
            "trainable_fraction", "train_seconds")


def read_run(path: Path) -> Run:
    """Read one run directory; raises UserError naming what is wrong.

    Checked: config.json and summary.json are JSON objects; the config names dataset, backbone,
    method and seed, and its known fields have their Config types; the summary's status is known and
    its measures are finite numbers (or null); features.safetensors, if there, has frozen and
    adapted features of one shape (n, d) and n labels/indices. Only headers are read.
    """
    path = Path(path)
    config, summary = (_read_object(path / name) for name in ("config.json", "summary.json"))
    _check_config(config)
    status = summary.get("status")
    if status not in STATUSES:
        raise UserError(f"summary.json: unknown status {status!r}")
    for key in MEASURES:
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise UserError(f"summary.json: {key} {v!r} is not a number")
        if v is not None and not math.isfinite(v):
            raise UserError(f"summary.json: {key} is {v}")
    features = path / "features.safetensors"
    if features.exists():
        _check_features(feature_shapes(features))
    return Run(path, config, summary)


def _read_object(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"incomplete (no {path.name})" if path.name == "summary.json" else f"no {path.name}")
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise UserError(f"unreadable {path.name} ({e.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path.name} is not a JSON object")
    return obj


def _check_config(config: dict) -> None:
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise UserError(f"config.json lacks {', '.join(missing)}")
    for f in dataclasses.fields(Config):
        if f.name not in config or (f.name not in REQUIRED and config[f.name] is None):
            continue
        v, kind = config[f.name], {"int": int, "float": (int, float), "bool": bool, "str": str}.get(f.type)
        if kind is None:
            continue
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            raise UserError(f"config.json: {f.name} {v!r} is not {f.type}")
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"config.json: {f.name} is {v}")


def feature_shapes(path: Path) -> dict[str, list[int]]:
    """{name: shape} from a safetensors file's header, without reading its tensors."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"unreadable features.safetensors ({e.__class__.__name__})") from None


def _check_features(shapes: dict[str, list[int]]) -> None:
    frozen, adapted = shapes.get("frozen"), shapes.get("adapted")
    if frozen is None or adapted is None:
        raise UserError("features.safetensors lacks frozen or adapted features")
    if len(frozen) != 2 or frozen != adapted:
        raise UserError(f"features.safetensors: frozen {frozen} and adapted {adapted} are not one (n, d) shape")
    for key in ("labels", "indices"):
        if key in shapes and shapes[key] != frozen[:1]:
            raise UserError(f"features.safetensors: {key} {shapes[key]} for {frozen[0]} samples")


def discover(root: Path, complete_only: bool = True) -> Discovery:
    """Walk `root` for run directories (folders holding config.json or summary.json), sorted by path.

    Skipped, each with its reason: runs `read_run` refuses; with `complete_only`, runs whose status is
    not "complete"; runs whose feature width differs from the most common one among the runs of
    their dataset and backbone; and every run whose id (folder name) another run under `root` has
    too, since no analysis could tell which one is meant. Raises UserError if `root` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    found = Discovery()
    dirs = sorted({p.parent for name in ("config.json", "summary.json") for p in root.rglob(name)})
    by_id: dict[str, list[Path]] = {}
    for path in dirs:
        by_id.setdefault(path.name, []).append(path)
    widths: dict[tuple, dict[int, int]] = {}
    candidates = []
    for path in dirs:
        twins = [p for p in by_id[path.name] if p != path]
        if twins:
            found.skipped.append((path, f"the same run id as {', '.join(map(str, twins))}"))
            continue
        try:
            run = read_run(path)
        except UserError as e:
            found.skipped.append((path, str(e)))
            continue
        status = run.summary.get("status")
        if complete_only and status != "complete":
            reason = run.summary.get("error") or run.summary.get("reason") or ""
            found.skipped.append((path, f"status {status}" + (f": {reason}" if reason else "")))
            continue
        width = _width(run)
        if width is not None:
            group = widths.setdefault((run.config["dataset"], run.config["backbone"]), {})
            group[width] = group.get(width, 0) + 1
        candidates.append((run, width))
    for run, width in candidates:
        group = widths.get((run.config["dataset"], run.config["backbone"]), {})
        common = max(sorted(group), key=group.get) if group else None
        if width is not None and width != common:
            found.skipped.append((run.path, f"feature width {width}, but {group[common]} other run(s) of "
                                             f"{run.config['dataset']}/{run.config['backbone']} have {common}"))
            continue
        found.runs.append(run)
    found.skipped.sort(key=lambda s: str(s[0]))
    return found


def _width(run: Run) -> int | None:
    path = run.path / "features.safetensors"
    return feature_shapes(path)["frozen"][1] if path.exists() else None


def is_finished(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "summary.json").read_text()).get("status") in FINISHED
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
