"""A planted-shift task with a known answer: the teacher is the frozen backbone plus a rank-k* adapter.

The teacher copies the students' frozen backbone, gets one residual adapter of rank k* after its last
block (random factors; its output scaled to `planted_strength` times the size of the block's output
there) and a random head whose biases are tuned until the classes are balanced. Inputs are procedural
images (no download); labels are the teacher's argmax on the evaluation crop. So the feature shift a
student must learn has rank k*, strength 0 makes the teacher the backbone itself, and everything is
fixed by a task seed that does not depend on the run's seed.
"""

from __future__ import annotations

import torch
from timm.data import resolve_model_data_config
from torch import nn

from .adapters import add_adapters
from .backbones import create_backbone, input_size
from .config import Config
from .data import Images, procedural_images, transform

TASK_SEED = 4321
IMAGE_SIZE = 32  # stored resolution of the procedural images


def plant(teacher: nn.Module, rank: int, strength: float, calibration: torch.Tensor) -> nn.Module:
    """Give the backbone `teacher` a rank-k* adapter after its last block and a random head, in place.

    `calibration` (B, 3, S, S) are normalised inputs on which the shift's size is set to `strength`
    times the root-mean-square of the last block's output.
    """
    g = torch.Generator().manual_seed(TASK_SEED)
    (adapter,) = add_adapters(teacher.eval(), rank, blocks="last:1")
    d, k, num_classes = teacher.embed_dim, rank, teacher.num_classes
    with torch.no_grad():
        adapter.down.weight.copy_(torch.randn(k, d, generator=g) / d ** 0.5)
        adapter.up.weight.copy_(torch.linalg.qr(torch.randn(d, k, generator=g))[0])  # orthonormal directions
        captured = {}
        hook = teacher.blocks[-1].inner.register_forward_hook(lambda m, a, y: captured.update(x=y))
        teacher.forward_features(calibration)
        hook.remove()
        x = captured["x"]
        branch = adapter.up(adapter.act(adapter.down(x)))
        adapter.up.weight.mul_(strength * x.pow(2).mean().sqrt() / branch.pow(2).mean().sqrt())
        teacher.head.weight.copy_(torch.randn(num_classes, d, generator=g) / d ** 0.5)
        teacher.head.bias.zero_()
    return teacher


@torch.no_grad()
def balanced_labels(teacher: nn.Module, inputs: torch.Tensor, num_classes: int, iters: int = 2000) -> torch.Tensor:
    """Teacher argmax after tuning the head's biases so each class gets n/C of `inputs` (within 5%)."""
    logits = torch.cat([teacher(x) for x in inputs.split(512)]) - teacher.head.bias
    target, step = len(logits) / num_classes, 0.1 * logits.std()
    for _ in range(iters):
        counts = torch.bincount((logits + teacher.head.bias).argmax(1), minlength=num_classes).float()
        if (counts - target).abs().max() <= 0.05 * target:
            break
        teacher.head.bias -= step * (counts - target) / target
        step *= 0.998
    return (logits + teacher.head.bias).argmax(1)


def planted_task(config: Config) -> tuple[Images, Images]:
    """(train, test) Images labelled by the planted teacher; deterministic, whatever the run's seed."""
    g = torch.Generator().manual_seed(TASK_SEED)
    n_train, n = config.train_samples, config.train_samples + config.test_samples
    images = procedural_images(n, IMAGE_SIZE, g)
    size = input_size(config.backbone, config.image_size)
    teacher = create_backbone(config.backbone, config.weights, config.num_classes, config.image_size)
    dc = resolve_model_data_config(teacher)
    inputs = transform(images, size, dc["mean"], dc["std"], train=False)
    plant(teacher, config.planted_rank, config.planted_strength, inputs[:512])
    labels = balanced_labels(teacher, inputs, config.num_classes)
    return (Images(images[:n_train], labels[:n_train], config.num_classes),
            Images(images[n_train:], labels[n_train:], config.num_classes))
