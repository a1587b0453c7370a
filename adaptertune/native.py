"""Datasets read as their downloads unpack: Tiny-ImageNet, ImageNet-R and VTAB-1k's list files.

Each loader turns a folder into `NativeSplits`: (paths, labels) of train and test, the class count
and what the run records about the split (class names, lists, the published sizes checked), and
data.py sends them through `image_file_splits` (the decode cache and its checks) like any other
image-file dataset. A missing or half-unpacked download is one line naming what was expected where.

- `tiny-imagenet`: `train/<wnid>/images/*.JPEG` for training, `val/images/*.JPEG` labelled by
  `val/val_annotations.txt` as the test split (the unlabelled `test/` is not used); classes from
  `wnids.txt` (or the train folders), names from `words.txt`. Checked: 100,000 / 10,000 images.
- `imagenet-r`: 200 `<wnid>/` folders, 30,000 images, no split: 20% drawn as the test split with
  the fixed seed `SPLIT_SEED` (every run of a study tests on the same images), saved to
  `<data-root>/adaptertune-cache/imagenet-r-split-seed0.json`; the trainer holds out 10% of the rest
  for validation by the run's seed, as for every dataset.
- `vtab:<task>` (the 19 tasks of `VTAB_CLASSES`): `<root>/<task>/{train800,val200,train800val200,
  test}.txt`, one "path label" per line, paths relative to the task folder, as VPT, NOAH, SSF and
  Adapter+ share them. `vtab:<task>` is the protocol's final run: train on train800val200, no
  validation (the last epoch's weights), test on test. `vtab:<task>:train800` is its model selection:
  train on train800, validate on val200 (the best epoch, `best_val_acc1`), test on test. Both read the
  same 1,000 training images, in the order train800 then val200 (`val_rows` names the validation
  rows), after checking that train800val200 is exactly train800 + val200.

Imports no other adaptertune module but errors.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WNID = re.compile(r"n\d{8}")
TINY_IMAGENET_SIZES = {"train": 100_000, "test": 10_000, "classes": 200}  # tiny-imagenet-200.zip
IMAGENET_R_SIZES = {"images": 30_000, "classes": 200}  # imagenet-r.tar
SPLIT_SEED, TEST_FRACTION = 0, 0.2  # ImageNet-R's test split: fixed, so every run tests on the same images
VTAB_SIZES = {"train800.txt": 800, "val200.txt": 200, "train800val200.txt": 1000}
VTAB_CLASSES = {  # task folder -> classes, as the PEFT repositories (VPT, NOAH) name and count them
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9}
FOLDERS = {"tiny-imagenet": "tiny-imagenet-200", "imagenet-r": "imagenet-r", "vtab": "vtab-1k"}


@dataclass
class NativeSplits:
    root: Path
    train: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    num_classes: int
    names: tuple[str, str]  # the splits' names (cache files, config.json)
    train_record: dict = field(default_factory=dict)  # added to the train split's `source`
    test_record: dict = field(default_factory=dict)


def is_native(name: str) -> bool:
    return name in ("tiny-imagenet", "imagenet-r") or name.startswith("vtab:")


def splits(name: str, data_root: Path, cache_dir: Path, skip_corrupt: bool = False) -> NativeSplits:
    """The native dataset `name` under `data_root` (the unpacked folder, or a folder holding it under
    its usual name: tiny-imagenet-200, imagenet-r, vtab-1k)."""
    if name == "tiny-imagenet":
        return tiny_imagenet(_root(name, data_root), TINY_IMAGENET_SIZES)
    if name == "imagenet-r":
        return imagenet_r(_root(name, data_root), cache_dir, IMAGENET_R_SIZES)
    task, _, phase = name[len("vtab:"):].partition(":")
    if skip_corrupt:
        raise UserError(f"--dataset {name}: --skip-corrupt does not apply to VTAB-1k, whose splits are fixed lists")
    return vtab(_root("vtab", data_root), task, phase)


def _root(kind: str, data_root: Path) -> Path:
    nested = Path(data_root) / FOLDERS[kind]
    return nested if nested.is_dir() else Path(data_root)


# -- Tiny-ImageNet ---------------------------------------------------------------------------------

def tiny_imagenet(root: Path, sizes: dict | None) -> NativeSplits:
    """`sizes` (train, test, classes: the published ones) are checked when given."""
    layout = f"{root}/train/<wnid>/images/*.JPEG, {root}/val/images/*.JPEG and {root}/val/val_annotations.txt"
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise UserError(f"tiny-imagenet: expected {layout} (tiny-imagenet-200.zip unpacked) under --data-root")
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = wnids_file.read_text().split()
    else:
        wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(wnids)}
    train: tuple[list[str], list[int]] = ([], [])
    for w in wnids:
        files = _images(root / "train" / w / "images")
        if not files:
            raise UserError(f"tiny-imagenet: expected {root}/train/{w}/images/*.JPEG (class {w}): none there "
                            "(half unpacked?)")
        train[0].extend(files)
        train[1].extend([index[w]] * len(files))
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise UserError(f"tiny-imagenet: expected {ann} (the validation labels): not there")
    test: tuple[list[str], list[int]] = ([], [])
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"tiny-imagenet: {ann} line {lineno}: expected 'file<TAB>wnid ...' with a wnid of "
                            f"the training classes, got {line[:80]!r}")
        test[0].append(str(root / "val" / "images" / parts[0]))
        test[1].append(index[parts[1]])
    _all_exist(test[0], f"tiny-imagenet: {ann} names")
    if sizes:
        _check_size("tiny-imagenet", len(wnids), sizes["classes"], "classes", f"{root}/train/<wnid>")
        _check_size("tiny-imagenet", len(train[0]), sizes["train"], "training images", f"{root}/train/<wnid>/images")
        _check_size("tiny-imagenet", len(test[0]), sizes["test"], "validation images", f"{ann}")
    names = _words(root / "words.txt", wnids)
    return NativeSplits(root, train, test, len(wnids), ("tiny-imagenet-train", "tiny-imagenet-val"),
                        train_record={"classes": wnids, "class_names": names, "checked_sizes": bool(sizes)},
                        test_record={"from": "val/val_annotations.txt"})


def _words(path: Path, wnids: list[str]) -> list[str] | None:
    """The names of `wnids` from an ImageNet `words.txt` (wnid<TAB>names), or None without one."""
    if not path.is_file():
        return None
    words = dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    return [words.get(w, w).strip() for w in wnids]


# -- ImageNet-R ------------------------------------------------------------------------------------

def imagenet_r(root: Path, cache_dir: Path, sizes: dict | None) -> NativeSplits:
    """All images of the `<wnid>/` folders (`sizes`: images, classes checked when given), a seeded
    80/20 train/test split, saved in `cache_dir`."""
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir() and WNID.fullmatch(p.name)) if root.is_dir() else []
    if not wnids:
        raise UserError(f"imagenet-r: expected {root}/<wnid>/*.jpg (200 class folders such as n01443537, "
                        "imagenet-r.tar unpacked) under --data-root")
    files, labels = [], []
    for i, w in enumerate(wnids):
        found = _images(root / w)
        if not found:
            raise UserError(f"imagenet-r: expected images in {root}/{w}: none there (half unpacked?)")
        files.extend(found)
        labels.extend([i] * len(found))
    if sizes:
        _check_size("imagenet-r", len(wnids), sizes["classes"], "class folders", f"{root}/<wnid>")
        _check_size("imagenet-r", len(files), sizes["images"], "images", f"{root}/<wnid>/")
    train_idx, test_idx = draw_test_split(len(files), SPLIT_SEED)
    split_file = Path(cache_dir) / f"imagenet-r-split-seed{SPLIT_SEED}.json"
    _save_split(split_file, root, [files[i] for i in test_idx], len(files))
    pick = lambda idx: ([files[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    record = {"split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "of": len(files), "split_file": str(split_file)}
    return NativeSplits(root, pick(train_idx), pick(test_idx), len(wnids), ("imagenet-r-train", "imagenet-r-test"),
                        train_record={**record, "classes": wnids, "class_names": _readme_names(root, wnids),
                                      "checked_sizes": bool(sizes)},
                        test_record=record)


def draw_test_split(n: int, seed: int, fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of n images: `fraction` of them drawn as the test split by `seed`, sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(n * fraction)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _save_split(path: Path, root: Path, test_files: list[str], n: int) -> None:
    """Write the test split (paths relative to `root`) once; a later draw that differs is refused."""
    test = sorted(os.path.relpath(f, root) for f in test_files)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or unreadable: (re)write it below
        saved = None
    if isinstance(saved, dict):
        if saved.get("test") != test or saved.get("of") != n:
            raise UserError(f"imagenet-r: {root} is not the folder the test split in {path} was drawn from "
                            f"({saved.get('of')} images then, {n} now): restore it, or delete {path} to draw again")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "of": n, "test": test}, f)
    os.replace(tmp, path)


def _readme_names(root: Path, wnids: list[str]) -> list[str] | None:
    """Class names from the archive's README.txt lines "<wnid> <name>", where all of them are there."""
    readme = root / "README.txt"
    if not readme.is_file():
        return None
    found = dict(m.groups() for line in readme.read_text(errors="replace").splitlines()
                 if (m := re.match(r"\s*(n\d{8})\s+(.+?)\s*$", line)))
    return [found[w] for w in wnids] if all(w in found for w in wnids) else None


# -- VTAB-1k ---------------------------------------------------------------------------------------

def vtab(root: Path, task: str, phase: str = "") -> NativeSplits:
    """`phase` "" (train800val200 -> test, no validation) or "train800" (train800, val200 -> best epoch)."""
    name = f"vtab:{task}" + (f":{phase}" if phase else "")
    if task not in VTAB_CLASSES:
        raise UserError(f"--dataset {name}: unknown VTAB-1k task {task!r}; the 19 are {', '.join(VTAB_CLASSES)}")
    if phase not in ("", "train800"):
        raise UserError(f"--dataset {name}: expected vtab:{task} (train800val200 -> test) or "
                        f"vtab:{task}:train800 (train800, val200 for model selection)")
    folder = root / task
    lists = {f: _list_file(folder / f, name) for f in (*VTAB_SIZES, "test.txt")}
    for f, n in VTAB_SIZES.items():
        if len(lists[f][0]) != n:
            raise UserError(f"--dataset {name}: {folder / f} has {len(lists[f][0])} lines, the protocol's has {n}")
    train800, val200, both = lists["train800.txt"], lists["val200.txt"], lists["train800val200.txt"]
    if set(train800[0]) & set(val200[0]):
        raise UserError(f"--dataset {name}: train800.txt and val200.txt share images, e.g. "
                        f"{min(set(train800[0]) & set(val200[0]))}")
    if set(zip(*train800)) | set(zip(*val200)) != set(zip(*both)):
        raise UserError(f"--dataset {name}: {folder / 'train800val200.txt'} is not train800.txt + val200.txt "
                        "(other files or labels)")
    k = VTAB_CLASSES[task]
    for f, (paths, labels) in lists.items():
        if labels and not 0 <= min(labels) <= max(labels) < k:
            raise UserError(f"--dataset {name}: {folder / f} has labels outside 0..{k - 1} ({task} has {k} classes)")
    train = (train800[0] + val200[0], train800[1] + val200[1])
    n = len(train[0])
    val_rows = [len(train800[0]), n] if phase else [n, n]  # train800's rows train, val200's validate
    protocol = ("train800 -> val200 (model selection) -> test" if phase else "train800val200 -> test (final run)")
    return NativeSplits(folder, train, lists["test.txt"], k, (f"vtab-{task}-train800val200", f"vtab-{task}-test"),
                        train_record={"lists": ["train800.txt", "val200.txt"], "val_rows": val_rows,
                                      "protocol": protocol},
                        test_record={"lists": ["test.txt"]})


def _list_file(path: Path, name: str) -> tuple[list[str], list[int]]:
    """(paths, labels) of a "path label" list, paths relative to its folder; each file must be there."""
    if not path.is_file():
        raise UserError(f"--dataset {name}: expected {path} (VTAB-1k's list files train800.txt, val200.txt, "
                        "train800val200.txt and test.txt beside the images): not there")
    paths, labels = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        file, label = (line.rsplit(maxsplit=1) + [""])[:2]
        if not label.lstrip("-").isdigit():
            raise UserError(f"--dataset {name}: {path} line {lineno}: expected 'path label', got {line[:80]!r}")
        paths.append(str(path.parent / file))
        labels.append(int(label))
    _all_exist(paths, f"--dataset {name}: {path} names")
    return paths, labels


# -- shared checks ---------------------------------------------------------------------------------

def _images(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _all_exist(paths: list[str], what: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{what} {missing[0]}, which is not there ({len(missing)} of {len(paths)} files "
                        "missing: half unpacked?)")


def _check_size(name: str, found: int, published: int, what: str, where: str) -> None:
    if found != published:
        raise UserError(f"{name}: expected {published:,} {what} in {where}, found {found:,} "
                        "(half unpacked, or not the published download?)")
