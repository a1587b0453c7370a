import numpy as np
import torch

from adaptertune.backbones import create_backbone
from adaptertune.config import Config
from adaptertune.data import procedural_images, transform
from adaptertune.planted import plant, planted_task

CONFIG = Config(dataset="planted", backbone="vit_nano", weights="none", train_samples=600, test_samples=200,
                num_classes=5, planted_rank=3)


def _inputs(n=64):
    x = procedural_images(n, 32, torch.Generator().manual_seed(0))
    return transform(x, 32, (0.5,) * 3, (0.5,) * 3, train=False)


def test_strength_zero_teacher_is_the_backbone():
    x = _inputs()
    backbone = create_backbone("vit_nano", "none", num_classes=5).eval()
    teacher = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=0.0, calibration=x)
    with torch.no_grad():
        assert torch.equal(teacher.forward_features(x), backbone.forward_features(x))
        strong = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=1.0, calibration=x)
        assert not torch.allclose(strong.forward_features(x), backbone.forward_features(x))


def test_planted_shift_has_rank_k_and_the_requested_size():
    x = _inputs()
    teacher = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=0.5, calibration=x)
    block = teacher.blocks[-1]
    seen = {}
    block.register_forward_hook(lambda m, a, y: seen.update(out=y))
    block.inner.register_forward_hook(lambda m, a, y: seen.update(inner=y))
    with torch.no_grad():
        teacher.forward_features(x)
    shift = (seen["out"] - seen["inner"]).reshape(-1, teacher.embed_dim).double()
    assert torch.linalg.matrix_rank(shift, rtol=1e-4).item() == 3
    ratio = shift.pow(2).mean().sqrt() / seen["inner"].double().pow(2).mean().sqrt()
    assert abs(ratio.item() - 0.5) < 1e-3


def test_labels_are_balanced_deterministic_and_independent_of_the_run_seed():
    train, test = planted_task(CONFIG)
    again, _ = planted_task(Config(**{**CONFIG.to_dict(), "seed": 7}))
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    counts = np.bincount(torch.cat([train.labels, test.labels]).numpy(), minlength=5)
    assert counts.min() >= 0.9 * 160 and counts.max() <= 1.1 * 160
    assert len(train) == 600 and len(test) == 200 and train.images.dtype == torch.uint8


def test_labels_follow_the_teacher_not_the_backbone_alone():
    """With a strong shift the labels differ from what the same head reads off the backbone."""
    weak, _ = planted_task(Config(**{**CONFIG.to_dict(), "planted_strength": 0.0}))
    strong, _ = planted_task(Config(**{**CONFIG.to_dict(), "planted_strength": 2.0}))
    assert (weak.labels != strong.labels).float().mean() > 0.2
