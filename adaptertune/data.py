"""Datasets as uint8 image tensors, splits, and batched augmentation on the training device.

Every dataset becomes `Images`: uint8 (N, 3, H, W) plus int64 labels. Small datasets (CIFAR, SVHN,
synthetic, planted) stay in memory; image-file datasets are decoded once by DataLoader workers into
a square uint8 cache at `store_size(image_size)` (a .npy file, memory-mapped on later runs).
Augmentation runs batched on the device in a few kernels: a per-image affine crop box sampled like
RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) with a horizontal flip, one `grid_sample`,
then normalisation. Evaluation takes the central 0.875 of the image (resize 256 / crop 224).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .errors import UserError

EVAL_CROP = 0.875  # resize 256, center crop 224


@dataclass
class Images:
    images: torch.Tensor | np.ndarray  # (N, 3, H, W) uint8; a memory-mapped array for large sets
    labels: torch.Tensor  # (N,) int64
    num_classes: int

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
        return Images(self.images.to(device), self.labels, self.num_classes)


# -- splits ----------------------------------------------------------------------------------------

def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of a training set of n, split by `seed`; both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def feature_indices(n: int, k: int) -> np.ndarray:
    """The fixed evaluation subset whose features every run of a sweep saves (seed 0, not the run's)."""
    return np.sort(np.random.default_rng(0).permutation(n)[: min(k, n)])


# -- augmentation ----------------------------------------------------------------------------------

def crop_boxes(n: int, train: bool, generator: torch.Generator | None, device) -> torch.Tensor:
    """(n, 2, 3) affine maps from output to input coordinates: a crop box per image (+ flip)."""
    if not train:
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = EVAL_CROP
        return theta
    u = torch.rand(n, 5, generator=generator, device=device)
    area = 0.08 + 0.92 * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)  # box width / image width
    h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)  # box centre in [-1, 1] coordinates, box inside the image
    cy = (2 * u[:, 3] - 1) * (1 - h)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def transform(x: torch.Tensor, size: int, mean, std, train: bool, generator=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised (B, 3, size, size): crop/flip/resize in one grid_sample."""
    theta = crop_boxes(len(x), train, generator, x.device)
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    y = F.grid_sample(x.to(dtype), grid.to(dtype), mode="bilinear", padding_mode="border", align_corners=False)
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
LOCAL_ONLY = {"tiny-imagenet", "imagenet-r"}  # no torchvision loader: use folder:PATH


def store_size(image_size: int) -> int:
    return round(image_size / EVAL_CROP)


def load(config: Config, image_size: int) -> tuple[Images, Images]:
    """(train, test) for `config.dataset`; raises UserError when it cannot be found or fetched."""
    name = config.dataset
    if name == "synthetic":
        return synthetic(config)
    if name == "planted":
        from .planted import planted_task

        return planted_task(config)
    if name.startswith("folder:"):
        return _folder(Path(name[len("folder:"):]), config, image_size)
    if name in LOCAL_ONLY:
        raise UserError(f"{name} has no torchvision loader: pass --dataset folder:PATH with PATH/train and PATH/test")
    if name not in TORCHVISION:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join([*TORCHVISION, 'synthetic', 'planted'])} "
                        "or folder:PATH")
    return _torchvision(name, config, image_size)


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


def _torchvision(name: str, config: Config, image_size: int) -> tuple[Images, Images]:
    root = Path(config.data_root)
    _, train_kw, test_kw = TORCHVISION[name]
    if test_kw is None:
        full = _decode(_open_torchvision(name, root, train_kw), root, f"{name}-all", config, image_size)
        train_idx, test_idx = split_indices(len(full), 0.2, seed=0)
        return _subset(full, train_idx), _subset(full, test_idx)
    out = []
    for split, kw in (("train", train_kw), ("test", test_kw)):
        ds = _open_torchvision(name, root, kw)
        if name.startswith("cifar"):  # already uint8 arrays in memory
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            out.append(Images(x, torch.tensor(ds.targets), len(ds.classes)))
        elif name == "svhn":
            out.append(Images(torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), 10))
        else:
            out.append(_decode(ds, root, f"{name}-{split}", config, image_size))
    out[1].num_classes = out[0].num_classes = max(out[0].num_classes, out[1].num_classes)
    return out[0], out[1]


def _folder(path: Path, config: Config, image_size: int) -> tuple[Images, Images]:
    from torchvision.datasets import ImageFolder

    test_dir = next((path / s for s in ("test", "val") if (path / s).is_dir()), None)
    if not (path / "train").is_dir() or test_dir is None:
        raise UserError(f"--dataset folder:{path}: expected {path}/train/<class>/... and {path}/test (or val)/<class>/...")
    train, test = ImageFolder(str(path / "train")), ImageFolder(str(test_dir))
    if train.classes != test.classes:
        raise UserError(f"--dataset folder:{path}: train and {test_dir.name} have different classes")
    tag = path.resolve().as_posix().strip("/").replace("/", "_")
    return (_decode(train, path, f"{tag}-train", config, image_size),
            _decode(test, path, f"{tag}-{test_dir.name}", config, image_size))


def _decode(ds, root: Path, tag: str, config: Config, image_size: int) -> Images:
    """Decode an image-file dataset once into a square uint8 cache; memory-map it afterwards."""
    from torchvision import transforms as T

    size = store_size(image_size)
    cache = Path(config.data_root) / "adaptertune-cache" / f"{tag}-{size}"
    images_path, labels_path = cache.with_suffix(".images.npy"), cache.with_suffix(".labels.npy")
    if not (images_path.exists() and labels_path.exists()):
        ds.transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
        loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=config.workers,
                                             collate_fn=_stack)
        images = np.lib.format.open_memmap(_tmp(images_path), mode="w+", dtype=np.uint8,
                                           shape=(len(ds), 3, size, size))
        labels, i = np.empty(len(ds), dtype=np.int64), 0
        for x, y in loader:
            images[i:i + len(x)], labels[i:i + len(x)] = x.numpy(), y.numpy()
            i += len(x)
        images.flush()
        del images
        np.save(_tmp(labels_path), labels)
        _tmp(images_path).replace(images_path)
        _tmp(labels_path).replace(labels_path)
    labels = torch.from_numpy(np.load(labels_path))
    classes = getattr(ds, "classes", None)
    num_classes = len(classes) if classes else int(labels.max()) + 1
    return Images(np.load(images_path, mmap_mode="r"), labels, num_classes)


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp.npy")


def _stack(batch):
    return torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch])


def _subset(data: Images, idx: np.ndarray) -> Images:
    images = data.images[idx] if isinstance(data.images, np.ndarray) else data.images[torch.from_numpy(idx)]
    return Images(images, data.labels[torch.from_numpy(idx)], data.num_classes)
