"""Datasets as uint8 image tensors, splits, and batched augmentation on the training device.

Every dataset becomes `Images`: uint8 (N, 3, H, W) plus int64 labels and a `source` record (split
name, image count, content digest) that config.json keeps. Small datasets (CIFAR, SVHN, synthetic,
planted) stay in memory; image-file datasets become a list of (path, label) that `cache.py` decodes
once into a square uint8 cache at `store_size(image_size)` (memory-mapped on later runs).
Augmentation runs batched on the device in a few kernels: per-image crop boxes drawn exactly as
torchvision's RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) draws them, a horizontal flip,
one `grid_sample`, then normalisation. Evaluation is the model's own resize / centre crop / interpolation
(preprocess.py).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import native
from .cache import decode_files, resolved
from .config import Config
from .errors import UserError
from .preprocess import Preprocess

EVAL_CROP = 0.875  # resize 256, center crop 224


@dataclass
class Images:
    images: torch.Tensor | np.ndarray  # (N, 3, H, W) uint8; a memory-mapped array for large sets
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    source: dict | None = None  # {"split", "images", "digest", ...}: what config.json records
    classes: list[str] | None = None  # class names, where the dataset has them

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels at `idx` (a CPU int64 tensor), on `device`."""
        if isinstance(self.images, np.ndarray):  # memory-mapped cache: read sorted rows
            x = torch.from_numpy(np.ascontiguousarray(self.images[np.sort(idx.numpy())]))
            idx = idx.sort().values
        else:
            x = self.images[idx.to(self.images.device)]
        pin = x.device.type == "cpu" and torch.device(device).type == "cuda"
        x = (x.pin_memory() if pin else x).to(device, non_blocking=True)
        return x, self.labels[idx].to(device, non_blocking=True)

    def batches(self, chunks: list[torch.Tensor], device):
        """Yield `batch(chunk)` for each chunk; a memory-mapped set reads the next batch in a thread
        while the device works on this one."""
        if not isinstance(self.images, np.ndarray):
            yield from (self.batch(c, device) for c in chunks)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.batch, chunks[0], device) if chunks else None
            for nxt in chunks[1:] + [None]:
                current = pending.result()
                pending = pool.submit(self.batch, nxt, device) if nxt is not None else None
                yield current

    def to(self, device) -> "Images":
        if isinstance(self.images, np.ndarray):
            return self
        return replace(self, images=self.images.to(device))


# -- splits ----------------------------------------------------------------------------------------

def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a training set of n, split by `seed`; both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def few_shot_indices(labels: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` indices per class drawn from `pool` (what validation left) by `seed`, sorted.

    Depends on nothing but the labels, the pool, K and the seed: every method of a seed trains on
    the same images.
    """
    rng = np.random.default_rng([seed, shots])
    picked = []
    for c in np.unique(labels):
        members = pool[labels[pool] == c]
        if len(members) < shots:
            raise UserError(f"--shots {shots}: class {c} has only {len(members)} training images outside validation")
        picked.append(rng.choice(members, shots, replace=False))
    return np.sort(np.concatenate(picked))


def feature_indices(n: int, k: int) -> np.ndarray:
    """The fixed evaluation subset whose features every run of a sweep saves (seed 0, not the run's)."""
    return np.sort(np.random.default_rng(0).permutation(n)[: min(k, n)])


# -- augmentation ----------------------------------------------------------------------------------

RRC_SCALE, RRC_RATIO, RRC_ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10  # torchvision's defaults


def random_resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator | None, device,
                              scale=RRC_SCALE, ratio=RRC_RATIO, flip: bool = True) -> torch.Tensor:
    """(n, 2, 3) affine maps (output -> input coordinates) of a RandomResizedCrop box per image of a
    height x width batch, then a horizontal flip with probability 1/2.

    The boxes are those of torchvision's `RandomResizedCrop.get_params`, drawn for all images at once:
    up to 10 attempts of an area share ~ U(scale) and a log-uniform aspect ratio, rounded to whole
    pixels; the first attempt that fits in the image wins and is placed uniformly at integer offsets.
    An image where none fits gets the central crop, with its ratio clamped to the `ratio` range.
    """
    f64 = dict(generator=generator, device=device, dtype=torch.float64)
    u = torch.rand(n, RRC_ATTEMPTS, 2, **f64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()  # half to even, as round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits (argmax: the first maximum)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    in_ratio = width / height  # the fallback: the whole image, ratio clamped to the range
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
    v = torch.rand(n, 3, **f64)
    top = torch.where(found, torch.floor(v[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(v[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    sign = torch.where(v[:, 2] < 0.5, -1.0, 1.0) if flip else torch.ones_like(w)
    theta = torch.zeros(n, 2, 3, device=device, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w / width * sign, (2 * left + w) / width - 1  # [-1, 1] coordinates
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    return theta.float()


def transform(x: torch.Tensor, size: int, mean, std, train: bool, generator=None,
              dtype: torch.dtype = torch.float32, interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised (B, 3, size, size).

    Training: crop/flip/resize in one grid_sample with the model's `interpolation`. Evaluation:
    resize 256 / crop 224 bilinear as timm does it; a model's own is `backbones.preprocess(name).eval`.
    """
    if not train:
        return Preprocess(size, tuple(mean), tuple(std), EVAL_CROP).eval(x, dtype)
    theta = random_resized_crop_boxes(len(x), x.shape[-2], x.shape[-1], generator, x.device)
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    y = F.grid_sample(x.to(dtype), grid.to(dtype), mode=interpolation, padding_mode="border", align_corners=False)
    if interpolation == "bicubic":
        y = y.clamp(0, 255)  # bicubic overshoots; a PIL crop would clip to uint8
    mean = torch.tensor(mean, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (y - mean) / std


# -- datasets --------------------------------------------------------------------------------------

def procedural_images(n: int, size: int, generator: torch.Generator, smooth: int = 4) -> torch.Tensor:
    """(n, 3, size, size) uint8 random smooth colour fields: inputs needing no download."""
    low = torch.randn(n, 3, smooth, smooth, generator=generator)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.3 * torch.randn(n, 3, size, size, generator=generator)
    return (img * 48 + 128).clamp(0, 255).to(torch.uint8)


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
