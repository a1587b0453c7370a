"""A claim per run: which worker trains it. Workers on one machine (one per GPU) or on cluster
nodes sharing a file system each walk the same sweep and train only the runs they claim.

A claim is `<run>/claim.json`, created atomically with O_CREAT|O_EXCL (atomic on local file
systems and on NFSv3+), naming host, pid, the process's start time and the claim's start. While
the run trains, a daemon thread touches the file every HEARTBEAT seconds. A claim is dead when
  - its host is this host and its process is gone (or the pid now belongs to a process that
    started at another time: pids are reused), or
  - its host is another one and its heartbeat is older than STALE seconds. We cannot ask another
    node whether a pid lives, so age is the only signal; on NFS the mtime is set by the file server's
    clock, so the comparison is off by the skew between that clock and ours only (NTP keeps it far
    below STALE). A node that is alive but partitioned from the file system for longer than STALE
    loses its claim; its summary would then race the new holder's, which is why STALE is generous.
A dead claim is taken over under a short second lock (`claim.json.break`, also O_EXCL), so two
workers that both see it dead cannot both take it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

NAME = "claim.json"
HEARTBEAT = 30.0  # seconds between touches of a held claim
STALE = 600.0  # a claim from another host whose heartbeat is older than this is dead
BREAK_STALE = 60.0  # a takeover lock older than this was left by a worker that died taking over


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex}


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: half written by a worker killed while creating it


def alive(info: dict, path: Path) -> bool:
    """Whether the claim `info` (read from `path`) is held by a live worker."""
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        pid = info["pid"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, another user's
        return info.get("proc_start") in (None, _proc_start(pid))
    try:  # another host, or a claim too torn to name its holder: judge by its heartbeat
        return time.time() - path.stat().st_mtime < STALE
    except FileNotFoundError:
        return False


def _create(path: Path, info: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info))
        f.flush()
        os.fsync(f.fileno())
    return True


@dataclass
class Claim:
    path: Path
    info: dict
    took_over: dict | None = None  # the dead claim this one replaced
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self):
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def held(self) -> bool:
        info = _read(self.path)
        return bool(info) and info.get("token") == self.info["token"]

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if it is still ours."""
        self._stop.set()
        if self.held():
            self.path.unlink(missing_ok=True)
            try:
                self.path.parent.rmdir()  # nothing was written: leave no empty run directory
            except OSError:
                pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: Path) -> dict | None:
    """The live claim on `run_dir`, or None."""
    path = Path(run_dir) / NAME
    info = _read(path)
    return info if info is not None and alive(info, path) else None


def claim(run_dir: Path) -> Claim | None:
    """Claim `run_dir` for this process; None if a live worker holds it (or is taking it over)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path, me = run_dir / NAME, _me()
    for _ in range(3):  # a claim released or taken over between our steps: look again
        if _create(path, me):
            return Claim(path, me)
        info = _read(path)
        if info is None:
            continue
        if alive(info, path):
            return None
        taken = _take_over(path, info, me)
        if taken is not None:
            return taken
        if path.with_name(NAME + ".break").exists():
            return None  # another worker is taking it over
    return None


def _take_over(path: Path, dead: dict, me: dict) -> Claim | None:
    brk = path.with_name(NAME + ".break")
    if not _create(brk, me):
        try:
            if time.time() - brk.stat().st_mtime > BREAK_STALE:
                brk.unlink(missing_ok=True)  # its worker died mid-takeover; the next look retries
        except FileNotFoundError:
            pass
        return None
    try:
        if _read(path) != dead:  # released or replaced since we judged it dead
            return None
        path.unlink(missing_ok=True)
        return Claim(path, me, took_over=dead) if _create(path, me) else None
    finally:
        brk.unlink(missing_ok=True)
