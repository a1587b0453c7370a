"""The run directory: the contract between the trainer and the analyses (DESIGN.md).

    <run>/config.json          Config.to_dict() plus "env" (package versions, git commit)
    <run>/metrics.jsonl        one JSON object per event (epoch, split, loss, acc1, acc5, lr, ...)
    <run>/summary.json         written last: {"status": "complete"|"diverged"|"failed", "test_acc1", ...}
    <run>/adapter.safetensors  trainable weights only, the config in its metadata
    <run>/features.safetensors "frozen", "adapted" (n, d) float32: the pooled last-block output before
                               the final norm, where adapters add their shift (features.py);
                               "frozen.prelogits", "adapted.prelogits" (n, d): what the head reads;
                               "labels", "indices" (n,) int64; optionally "frozen.block{i}", "adapted.block{i}"

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
Imports no torch: the analyses read runs with numpy only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config
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


def read_lines(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
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
            "rank": c.get("rank") if c.get("method") == "adapter" else None,
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


def read_run(path: Path) -> Run:
    """Read one run directory; raises UserError naming what is wrong."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable config.json ({e.__class__.__name__})") from None
    if not (path / "summary.json").exists():
        raise UserError("incomplete (no summary.json)")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable summary.json ({e.__class__.__name__})") from None
    if not isinstance(config, dict) or not isinstance(summary, dict):
        raise UserError("config.json / summary.json is not a JSON object")
    return Run(path, config, summary)


def discover(root: Path, complete_only: bool = True) -> Discovery:
    """Walk `root` for run directories (folders holding config.json), sorted by path.

    With `complete_only`, runs whose status is not "complete" are skipped with the reason.
    Raises UserError if `root` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    found = Discovery()
    for config_path in sorted(root.rglob("config.json")):
        path = config_path.parent
        try:
            run = read_run(path)
        except UserError as e:
            found.skipped.append((path, str(e)))
            continue
        status = run.summary.get("status")
        if complete_only and status != "complete":
            reason = run.summary.get("error") or ""
            found.skipped.append((path, f"status {status}" + (f": {reason}" if reason else "")))
            continue
        found.runs.append(run)
    return found


def is_finished(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "summary.json").read_text()).get("status") in FINISHED
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
