"""A planted-shift task with a known answer: the teacher is the frozen backbone plus a rank-k* adapter.

The teacher copies the students' frozen backbone and gets one residual adapter of rank k* after its
last block, `x + U gelu(D x + b)`, whose k* units each *bend* one direction of the class token:

- unit j reads v_j, the j-th principal direction of the class token over calibration inputs,
  standardised (z_j = (v_j·x − mean) / sd), through a hinge gelu(2 z_j − 1) that switches on half
  a standard deviation above the mean;
- it writes back along v_j with the (negative) amplitude that removes `strength` × BEND of the
  coordinate's linear trend: below the hinge v_j·x is unchanged, above it the coordinate turns back.

The head reads the k* planted directions only (W = A Vᵀ, A's columns orthonormal and orthogonal to the
all-ones vector), so every unit moves the logit differences equally; a linear head on the frozen
features cannot read a bend, one adapter unit can.
The head's biases are tuned until the classes are balanced over a pool of procedural images (no
download; each image's mean colour removed, which otherwise dominates the random backbone's class
token). Labels are exactly the teacher's argmax. Of the pool, each class keeps the KEEP share of its
images on which the teacher is most decisive (largest top-1 − top-2 logit gap): without it most
labels sit within a hair of a decision boundary, and no student could learn them in a CPU budget.
So the feature shift a student must learn has rank k*, strength 0 makes the teacher the backbone
itself, and everything is fixed by a task seed that does not depend on the run's seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import add_adapters
from .backbones import create_backbone, preprocess
from .config import Config
from .images import Images, procedural_images
from .errors import UserError

TASK_SEED = 4321
IMAGE_SIZE = 32   # stored resolution of the procedural images
HINGE = (2.0, 0.5)  # unit j computes gelu(gain * (z_j - at)): a hinge `at` standard deviations above the mean
BEND = 0.5        # share of each planted direction's linear trend a unit removes at strength 1
KEEP = 0.15       # share of the image pool kept per class: the teacher's most decisive labels
CALIBRATION = 2048  # pool images whose class tokens fix the planted directions and scales


def task_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, S, S) uint8 procedural images with each image's mean colour set to mid-grey."""
    x = procedural_images(n, IMAGE_SIZE, generator).float()
    return (x - x.mean((2, 3), keepdim=True) + 128).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def class_tokens(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """(B, d) class tokens at the output of the last block (before any adapter after it)."""
    block = model.blocks[-1]
    block = getattr(block, "inner", block)
    captured = []
    hook = block.register_forward_hook(lambda m, a, y: captured.append(y[:, 0]))
    try:
        for x in inputs.split(512):
            model.forward_features(x)
    finally:
        hook.remove()
    return torch.cat(captured)


def plant(teacher: nn.Module, rank: int, strength: float, calibration: torch.Tensor) -> nn.Module:
    """Give the backbone `teacher` a rank-k* adapter after its last block and a head reading its directions.

    `calibration` (B, 3, S, S) are normalised inputs: the principal directions of their class tokens
    are the directions the units bend, and their spread sets each unit's hinge and amplitude.
    """
    g = torch.Generator().manual_seed(TASK_SEED)
    x = class_tokens(teacher.eval(), calibration).double()
    (adapter,) = add_adapters(teacher, rank, blocks="last:1")
    d, k, num_classes = teacher.embed_dim, rank, teacher.num_classes
    if not 1 <= k < min(d, num_classes):
        raise UserError(f"--planted-rank {k}: needs 1 <= k < --num-classes ({num_classes}), so that every planted "
                        f"direction changes the labels, and k < the embedding width ({d})")
    with torch.no_grad():
        _, vectors = torch.linalg.eigh(torch.cov(x.T))
        v = vectors.flip(1)[:, :k]                                   # (d, k) top principal directions
        v = v * torch.where(v[v.abs().argmax(0), torch.arange(k)] < 0, -1.0, 1.0)  # a fixed sign each
        p = x @ v
        mean, sd = p.mean(0), p.std(0)
        gain, at = HINGE
        down_w, down_b = gain * v.T / sd[:, None], -gain * (mean / sd + at)
        a = F.gelu(x @ down_w.T + down_b)
        slope = ((a - a.mean(0)) * (p - mean)).mean(0) / p.var(0, unbiased=False)  # each unit's linear trend in v_j·x
        adapter.down.weight.copy_(down_w)
        adapter.down.bias.copy_(down_b)
        adapter.up.weight.copy_(v * (-strength * BEND / slope))
        # Orthonormal label read-outs orthogonal to the all-ones vector: argmax ignores a shift common
        # to every class, so this way each planted direction moves the logits' differences equally.
        mix = torch.randn(num_classes, k, generator=g, dtype=torch.float64)
        mix = torch.linalg.qr(mix - mix.mean(0))[0]
        teacher.head.weight.copy_(mix @ v.T)
        teacher.head.bias.zero_()
    return teacher


@torch.no_grad()
def balanced_labels(teacher: nn.Module, logits: torch.Tensor, iters: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Tune the teacher head's biases until each class is the argmax of n/C rows of `logits` (within 5%).

    `logits` (n, C) are the teacher's logits with zero head bias. Returns (labels (n,), margins (n,)):
    the teacher's argmax with the tuned biases, and its top-1 minus top-2 logit over the logits' std.
    """
    n, num_classes = logits.shape
    bias = torch.zeros(num_classes, dtype=logits.dtype)
    target, step = n / num_classes, 0.1 * logits.std()
    for _ in range(iters):
        counts = torch.bincount((logits + bias).argmax(1), minlength=num_classes).to(logits.dtype)
        if (counts - target).abs().max() <= 0.05 * target:
            break
        bias -= step * (counts - target) / target
        step *= 0.998
    teacher.head.bias.copy_(bias)
    logits = logits + bias
    top = logits.topk(min(2, num_classes), dim=1).values
    return logits.argmax(1), (top[:, 0] - top[:, -1]) / logits.std()


def most_decisive(labels: torch.Tensor, margins: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Indices (sorted) of n samples: per class, the n/C (remainder to the first classes) of largest margin."""
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).squeeze(1)
        take = n // num_classes + int(c < n % num_classes)
        if len(idx) < take:
            raise ValueError(f"planted task: class {c} has {len(idx)} pool images, {take} needed")
        keep.append(idx[margins[idx].argsort(descending=True, stable=True)[:take]])
    return torch.cat(keep).sort().values


def planted_task(config: Config) -> tuple[Images, Images]:
    """(train, test) Images labelled by the planted teacher; deterministic, whatever the run's seed."""
    images, labels = _task(*_task_key(config))
    n = config.train_samples
    return (Images(images[:n], labels[:n], config.num_classes),
            Images(images[n:], labels[n:], config.num_classes))


def make_teacher(config: Config) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, Callable]:
    """The planted teacher of `config`'s task with its balancing biases, and its image pool.

    Returns (teacher, pool (N, 3, S, S) uint8, labels (N,), margins (N,), inputs) where `inputs` maps
    uint8 images to the teacher's normalised inputs (the evaluation crop).
    """
    return _teacher(*_task_key(config))


def _task_key(c: Config) -> tuple:
    return (c.backbone, c.weights, c.image_size, c.num_classes, c.train_samples + c.test_samples, c.planted_rank,
            float(c.planted_strength))


def _teacher(backbone: str, weights: str, image_size: int, num_classes: int, n: int, rank: int, strength: float):
    g = torch.Generator().manual_seed(TASK_SEED)
    pool = task_images(max(round(n / KEEP), n + CALIBRATION), g)
    teacher = create_backbone(backbone, weights, num_classes, image_size).eval()
    inputs = preprocess(backbone, image_size).eval  # the students' own evaluation preprocessing

    plant(teacher, rank, strength, inputs(pool[:CALIBRATION]))
    with torch.no_grad():
        logits = torch.cat([teacher(inputs(chunk)) for chunk in pool.split(1024)])
    labels, margins = balanced_labels(teacher, logits)
    return teacher, pool, labels, margins, inputs


@functools.lru_cache(maxsize=2)  # the runs of a sweep share one task: build it once per process
def _task(*key) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, S, S) uint8, labels (n,)): the pool's most decisive n per class, in pool order."""
    _, pool, labels, margins, _ = _teacher(*key)
    keep = most_decisive(labels, margins, key[4], key[3])
    return pool[keep], labels[keep]
