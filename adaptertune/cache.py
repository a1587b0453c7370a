"""A content-keyed, verified decode cache: a list of image files -> one square uint8 array on disk.

`decode_files(files, labels, ...)` decodes each file once (PIL, RGB, shorter side resized to `size`
with torchvision's bilinear `Resize`, centre crop `size` x `size`) into `<stem>.npy` and memory-maps
it on later runs. The stem ends in a digest of everything the array was decoded from: the split's
name and root, every file's resolved path, size, modification time and label, the stored size and
the resize method. Two splits or two datasets never share a cache, and adding, removing or
replacing a file (or relabelling one) gives a new digest, so the next run decodes again. A cache is
read only after it is verified (its record names the same digest and file count, and the array has
the shape that count implies); anything else is decoded again, atomically (temporary files in the
cache folder, renamed into place, removed on any failure). An earlier cache of the same split (same
name, root and size, other contents) is deleted once the new one is in place.

An unreadable image stops the decode with one line naming the file, unless `skip_corrupt`: then it
is left out, and the record (and `source`) counts it. Imports no other adaptertune module.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

FORMAT = 1  # bump when the stored layout or the decoding changes
RESIZE = "PIL convert RGB; torchvision Resize(size, bilinear, antialias) of the shorter side; CenterCrop(size)"


@dataclass
class Decoded:
    images: np.ndarray  # (n_kept, 3, size, size) uint8, memory-mapped
    labels: np.ndarray  # (n_kept,) int64
    source: dict  # what config.json records: split, images, digest, skipped (+ skipped_files)


def file_digest(files: list, labels: list[int], *, name: str, root, size: int) -> tuple[str, str]:
    """(slot, key): `slot` digests the split's name, resolved root and stored size; `key` adds the
    resize method and every file's resolved path, byte size, mtime (ns) and label, in order."""
    slot = hashlib.sha256(json.dumps([FORMAT, name, os.path.realpath(root), size]).encode()).hexdigest()
    h = hashlib.sha256(f"{slot}\n{RESIZE}\n".encode())
    for path, real, label in zip(files, resolved(files), labels, strict=True):
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e.strerror or e}") from None
        h.update(f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{int(label)}\n".encode())
    return slot, h.hexdigest()


def resolved(files: list) -> list[str]:
    """Each file's path with its folder's symlinks resolved (realpath once per folder, not per file)."""
    dirs: dict[str, str] = {}
    out = []
    for path in files:
        folder, base = os.path.split(os.fspath(path))
        if folder not in dirs:
            dirs[folder] = os.path.realpath(folder)
        out.append(os.path.join(dirs[folder], base))
    return out


def decode_files(files: list, labels: list[int], *, name: str, root, cache_dir, size: int,
                 workers: int = 0, skip_corrupt: bool = False) -> Decoded:
    """The decoded images of `files` (in order) with their labels, from the cache or decoded now."""
    labels = np.asarray(labels, dtype=np.int64)
    slot, key = file_digest(files, labels, name=name, root=root, size=size)
    cache_dir = Path(cache_dir)
    prefix = f"{_safe(name)}-{size}-{slot[:8]}-"
    stem = cache_dir / f"{prefix}{key[:20]}"
    record = _verified(stem, key, len(files), size)
    if record is None:
        record = _decode(files, stem, key, size, workers, skip_corrupt, name)
        for old in cache_dir.glob(prefix + "*"):  # the same split's earlier contents
            if not old.name.startswith(stem.name) and not old.name.endswith(".tmp"):
                old.unlink(missing_ok=True)
    skipped = record["skipped"]
    if skipped and not skip_corrupt:
        first = skipped[0]
        raise UserError(f"cannot read image {first['path']} ({first['error']}); {len(skipped)} unreadable in "
                        f"{name}: fix or remove them, or pass --skip-corrupt to leave them out")
    keep = np.setdiff1d(np.arange(len(files)), [s["index"] for s in skipped])
    source = {"split": name, "images": len(keep), "digest": key[:16], "skipped": len(skipped)}
    if skipped:
        source["skipped_files"] = [s["path"] for s in skipped[:20]]
    return Decoded(np.load(_npy(stem), mmap_mode="r"), labels[keep], source)


def _verified(stem: Path, key: str, n: int, size: int) -> dict | None:
    """The cache's record if it names `key`, `n` files and an array of the matching shape; else None."""
    try:
        record = json.loads(_json(stem).read_text())
        images = np.load(_npy(stem), mmap_mode="r")
    except (OSError, ValueError):  # missing, unreadable, truncated
        return None
    kept = n - len(record.get("skipped", ()))
    if record.get("key") != key or record.get("files") != n or images.dtype != np.uint8 \
            or images.shape != (kept, 3, size, size):
        return None
    return record


def _decode(files, stem: Path, key: str, size: int, workers: int, skip_corrupt: bool, name: str) -> dict:
    from tqdm import tqdm

    stem.parent.mkdir(parents=True, exist_ok=True)
    tmps: list[str] = []

    def tmp() -> str:
        fd, path = tempfile.mkstemp(dir=stem.parent, prefix=stem.name + ".", suffix=".tmp")
        os.close(fd)
        tmps.append(path)
        return path

    try:
        path = tmp()
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size))
        loader = torch.utils.data.DataLoader(_Files(files, size), batch_size=64, num_workers=workers,
                                             collate_fn=list)
        kept, skipped = 0, []
        with tqdm(total=len(files), desc=f"decoding {name}", unit="img", disable=not sys.stdout.isatty()) as bar:
            for batch in loader:
                for i, x, error in batch:
                    if error is None:
                        images[kept] = x
                        kept += 1
                    elif skip_corrupt:
                        skipped.append({"index": i, "path": str(files[i]), "error": error})
                    else:
                        raise UserError(f"cannot read image {files[i]} ({error}); fix or remove it, "
                                        "or pass --skip-corrupt to leave unreadable images out")
                bar.update(len(batch))
        if skipped:  # the array holds `kept` rows: copy them into an array of that length
            path = tmp()
            short = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(kept, 3, size, size))
            for start in range(0, kept, 1024):
                short[start:start + 1024] = images[start:min(start + 1024, kept)]
            short.flush()
            del short
        images.flush()
        del images
        os.replace(path, _npy(stem))
        record = {"format": FORMAT, "key": key, "files": len(files), "size": size, "resize": RESIZE,
                  "skipped": skipped}
        with open(rec := tmp(), "w") as f:
            json.dump(record, f)
        os.replace(rec, _json(stem))  # last: a record marks a complete cache
        return record
    finally:
        for path in tmps:
            Path(path).unlink(missing_ok=True)


class _Files(torch.utils.data.Dataset):
    """(index, uint8 (3, size, size) array or None, error or None) per file; never raises."""

    def __init__(self, files, size: int):
        from torchvision import transforms as T

        self.files = files
        self.transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                x = self.transform(im.convert("RGB")).numpy()
            return i, x, None
        except Exception as e:  # any decoder failure is reported per file, with its message
            return i, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def _npy(stem: Path) -> Path:
    return stem.with_name(stem.name + ".npy")


def _json(stem: Path) -> Path:
    return stem.with_name(stem.name + ".json")
