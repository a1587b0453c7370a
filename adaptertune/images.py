"""Images as uint8 tensors on the training device: the `Images` container, splits (validation, few-shot,
the evaluation subset), and batched augmentation (crop boxes drawn as torchvision's RandomResizedCrop
draws them, a flip, one `grid_sample`, normalisation); procedural images for offline tasks.

What every dataset becomes: data.py loads datasets into it, planted.py makes the planted task from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

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
              dtype: torch.dtype = torch.float32, interpolation: str = "bilinear",
              within: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised (B, 3, size, size).

    Training: crop/flip/resize in one grid_sample with the model's `interpolation`. Evaluation:
    resize 256 / crop 224 bilinear as timm does it; a model's own is `backbones.preprocess(name).eval`.
    `within` (start, n): `x` is rows start .. start + B of a batch of n whose boxes are drawn together
    (a DDP process keeps its rows of the global batch's boxes: distributed.py).
    """
    if not train:
        return Preprocess(size, tuple(mean), tuple(std), EVAL_CROP).eval(x, dtype)
    start, n = within or (0, len(x))
    theta = random_resized_crop_boxes(n, x.shape[-2], x.shape[-1], generator, x.device)[start:start + len(x)]
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    y = F.grid_sample(x.to(dtype), grid.to(dtype), mode=interpolation, padding_mode="border", align_corners=False)
    if interpolation == "bicubic":
        y = y.clamp(0, 255)  # bicubic overshoots; a PIL crop would clip to uint8
    mean = torch.tensor(mean, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (y - mean) / std


# -- offline images -----------------------------------------------------------------------------------

def procedural_images(n: int, size: int, generator: torch.Generator, smooth: int = 4) -> torch.Tensor:
    """(n, 3, size, size) uint8 random smooth colour fields: inputs needing no download."""
    low = torch.randn(n, 3, smooth, smooth, generator=generator)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.3 * torch.randn(n, 3, size, size, generator=generator)
    return (img * 48 + 128).clamp(0, 255).to(torch.uint8)
