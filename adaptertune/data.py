"""Datasets as uint8 image tensors, splits, and batched augmentation on the training device.

Every dataset becomes `Images`: uint8 (N, 3, H, W) plus int64 labels and a `source` record (split
name, image count, content digest) that config.json keeps. Small datasets (CIFAR, SVHN, synthetic,
planted) stay in memory; image-file datasets become a list of (path, label) that `cache.py` decodes
once into a square uint8 cache at `store_size(image_size)` (memory-mapped on later runs).
Augmentation runs batched on the device in a few kernels: per-image crop boxes drawn exactly as
torchvision's RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) draws them, a horizontal flip,
one `grid_sample`, then normalisation. Evaluation is the model's own resize / centre crop / interpolation
(preprocess.py). `Images`, the splits and the augmentation live in images.py (re-exported here); this
module loads datasets into them.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import native
from .cache import decode_files, resolved
from .config import Config
from .errors import UserError
from .images import (EVAL_CROP, Images, feature_indices, few_shot_indices, procedural_images,  # noqa: F401
                     random_resized_crop_boxes, split_indices, transform)

def synthetic(config: Config) -> tuple[Images, Images]:
    """A class-conditional procedural task: each class is a smooth prototype plus per-image noise."""
    g = torch.Generator().manual_seed(1234)  # the task is fixed; the run's seed varies the training
    protos = procedural_images(config.num_classes, 32, g).float()
    out = []
    for n in (config.train_samples, config.test_samples):
        labels = torch.arange(n) % config.num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = procedural_images(n, 32, g).float()
        out.append(Images((0.6 * protos[labels] + 0.4 * noise).to(torch.uint8), labels, config.num_classes))
    return out[0], out[1]


TORCHVISION = {  # name -> (class, train kwargs, test kwargs)
    "cifar10": ("CIFAR10", dict(train=True), dict(train=False)),
    "cifar100": ("CIFAR100", dict(train=True), dict(train=False)),
    "svhn": ("SVHN", dict(split="train"), dict(split="test")),
    "pets": ("OxfordIIITPet", dict(split="trainval"), dict(split="test")),
    "food101": ("Food101", dict(split="train"), dict(split="test")),
    "flowers102": ("Flowers102", dict(split="train"), dict(split="test")),
    "aircraft": ("FGVCAircraft", dict(split="trainval", annotation_level="variant"),
                 dict(split="test", annotation_level="variant")),
    "dtd": ("DTD", dict(split="train"), dict(split="test")),
    "eurosat": ("EuroSAT", {}, None),  # one split: a fixed 80/20 train/test cut
}
NATIVE = ("tiny-imagenet", "imagenet-r", "vtab:<task>")  # no torchvision loader: read as unpacked (native.py)


def store_size(image_size: int) -> int:
    """Side of the square decode cache. Evaluation resizes this square to the model's own
    floor(size / crop_pct) (preprocess.py), which is exact when the stored side already equals it;
    storing at that side (and the model's interpolation) would make the cache depend on crop_pct."""
    return round(image_size / EVAL_CROP)


def load(config: Config, image_size: int) -> tuple[Images, Images]:
    """(train, test) for `config.dataset`, each with its `source`; raises UserError when it cannot be
    found or fetched, or when train and test would be the same data."""
    name = config.dataset
    if name == "synthetic":
        train, test = synthetic(config)
    elif name == "planted":
        from .planted import planted_task

        train, test = planted_task(config)
    elif name.startswith("folder:"):
        train, test = _folder(Path(name[len("folder:"):]), config, image_size)
    elif native.is_native(name):
        train, test = _native(name, config, image_size)
    elif name not in TORCHVISION:
        raise UserError(f"unknown dataset {name!r}: choose one of "
                        f"{', '.join([*TORCHVISION, *NATIVE, 'synthetic', 'planted'])} or folder:PATH")
    else:
        train, test = _torchvision(name, config, image_size)
    for split, d in (("train", train), ("test", test)):
        d.source = d.source or _memory_source(f"{name}-{split}", d)
    if train.source["digest"] == test.source["digest"]:
        raise UserError(f"--dataset {name}: the train and test splits hold the same images "
                        f"(digest {train.source['digest']})")
    return train, test


def _open_torchvision(name: str, root: Path, kwargs: dict):
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION[name][0])
    try:
        return cls(root=str(root), download=False, **kwargs)
    except RuntimeError:
        pass  # not there yet: download it once
    try:
        return cls(root=str(root), download=True, **kwargs)
    except Exception as e:
        raise UserError(f"dataset {name} is not under {root} and could not be downloaded "
                        f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"put it under --data-root or run once with network") from None


def file_list(ds) -> tuple[list[str], list[int]]:
    """The (paths, labels) of a torchvision image-file dataset, in its order, without calling its
    `__getitem__` (whose transforms differ between classes: OxfordIIITPet applies `transforms`)."""
    if hasattr(ds, "samples"):  # ImageFolder, EuroSAT
        return [str(p) for p, _ in ds.samples], [int(y) for _, y in ds.samples]
    for attr in ("_image_files", "_images"):  # Food101, Flowers102, FGVCAircraft, DTD / OxfordIIITPet
        if hasattr(ds, attr) and hasattr(ds, "_labels"):
            return [str(p) for p in getattr(ds, attr)], [int(y) for y in ds._labels]
    raise UserError(f"torchvision's {type(ds).__name__} keeps no file list this version of adaptertune "
                    "knows: use --dataset folder:PATH, or a torchvision version it was tested with")


def _torchvision(name: str, config: Config, image_size: int) -> tuple[Images, Images]:
    root = Path(config.data_root)
    _, train_kw, test_kw = TORCHVISION[name]
    if test_kw is None:
        ds = _open_torchvision(name, root, train_kw)
        full = replace(image_files(*file_list(ds), len(ds.classes), f"{name}-all", root, config, image_size),
                       classes=list(ds.classes))
        train_idx, test_idx = split_indices(len(full), 0.2, seed=0)
        return _subset(full, train_idx, f"{name}-train"), _subset(full, test_idx, f"{name}-test")
    train, test = (_open_torchvision(name, root, kw) for kw in (train_kw, test_kw))
    if name.startswith("cifar"):  # already uint8 arrays in memory
        return tuple(Images(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets),
                            len(ds.classes), classes=list(ds.classes)) for ds in (train, test))
    if name == "svhn":
        return tuple(Images(torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), 10) for ds in (train, test))
    num_classes = max(len(getattr(ds, "classes", ())) for ds in (train, test)) or None
    splits = image_file_splits(name, file_list(train), file_list(test), num_classes, root, config, image_size)
    classes = getattr(train, "classes", None)
    return tuple(replace(d, classes=list(classes) if classes else None) for d in splits)


def _native(name: str, config: Config, image_size: int) -> tuple[Images, Images]:
    """Tiny-ImageNet, ImageNet-R, VTAB-1k as they unpack (native.py), through the decode cache."""
    n = native.splits(name, Path(config.data_root), Path(config.data_root) / "adaptertune-cache", config.skip_corrupt)
    train, test = image_file_splits(name, n.train, n.test, n.num_classes, n.root, config, image_size, names=n.names)
    train.source.update(n.train_record)
    test.source.update(n.test_record)
    return train, test


def _folder(path: Path, config: Config, image_size: int) -> tuple[Images, Images]:
    from torchvision.datasets import ImageFolder

    test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
    if not (path / "train").is_dir() or test_dir is None:
        raise UserError(f"--dataset folder:{path}: expected {path}/train/<class>/... and {path}/test (or val)/<class>/...")
    try:
        train, test = ImageFolder(str(path / "train")), ImageFolder(str(test_dir))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"--dataset folder:{path}: {str(e).splitlines()[0]}") from None
    if train.classes != test.classes:
        raise UserError(f"--dataset folder:{path}: train and {test_dir.name} have different classes")
    splits = image_file_splits(f"folder:{path}", file_list(train), file_list(test), len(train.classes), path, config,
                               image_size, names=(f"{path.resolve().name}-train", f"{path.resolve().name}-{test_dir.name}"))
    return tuple(replace(d, classes=list(train.classes)) for d in splits)


def image_file_splits(name: str, train: tuple[list, list], test: tuple[list, list], num_classes: int | None,
                      root: Path, config: Config, image_size: int, names: tuple[str, str] | None = None
                      ) -> tuple[Images, Images]:
    """Train and test from their (paths, labels), refused when a file is in both; `num_classes`
    None: one more than the largest label."""
    shared = set(resolved(train[0])) & set(resolved(test[0]))
    if shared:
        raise UserError(f"--dataset {name}: {len(shared)} image files are in both train and test, e.g. {min(shared)}")
    num_classes = num_classes or max(max(train[1], default=0), max(test[1], default=0)) + 1
    names = names or (f"{name}-train", f"{name}-test")
    return tuple(image_files(*split, num_classes, n, root, config, image_size) for split, n in zip((train, test), names))


def image_files(files: list, labels: list[int], num_classes: int, split: str, root: Path, config: Config,
                image_size: int) -> Images:
    """A split given as image files and labels, through the content-keyed decode cache (cache.py)."""
    if not files:
        raise UserError(f"{split}: no images under {root}")
    d = decode_files(files, labels, name=split, root=root, cache_dir=Path(config.data_root) / "adaptertune-cache",
                     size=store_size(image_size), workers=config.workers, skip_corrupt=config.skip_corrupt)
    return Images(d.images, torch.from_numpy(d.labels), num_classes, d.source)


def _memory_source(split: str, data: Images) -> dict:
    """The `source` of an in-memory split: its size and a digest of its pixels and labels."""
    h = hashlib.sha256(np.ascontiguousarray(torch.as_tensor(data.images).cpu().numpy()))
    h.update(np.ascontiguousarray(data.labels.cpu().numpy().astype(np.int64)))
    return {"split": split, "images": len(data), "digest": h.hexdigest()[:16]}


def _subset(data: Images, idx: np.ndarray, split: str) -> Images:
    images = data.images[idx] if isinstance(data.images, np.ndarray) else data.images[torch.from_numpy(idx)]
    h = hashlib.sha256(f"{data.source['digest']}\n".encode())
    h.update(np.ascontiguousarray(idx, dtype=np.int64))
    source = {**data.source, "split": split, "images": len(idx), "digest": h.hexdigest()[:16]}
    return replace(data, images=images, labels=data.labels[torch.from_numpy(idx)], source=source)
