import numpy as np
import torch

from adaptertune.adapters import adapters_disabled
from adaptertune.backbones import create_backbone
from adaptertune.config import Config
from adaptertune.planted import BEND, class_tokens, make_teacher, most_decisive, plant, planted_task, task_images

CONFIG = Config(dataset="planted", backbone="vit_nano", weights="none", train_samples=600, test_samples=200,
                num_classes=5, planted_rank=3)


def _inputs(n=256):
    x = task_images(n, torch.Generator().manual_seed(0))
    return x, _normalise(x)


def _normalise(x):
    from adaptertune.data import transform

    return transform(x, 32, (0.5,) * 3, (0.5,) * 3, train=False)


def test_strength_zero_teacher_is_the_backbone():
    _, x = _inputs()
    backbone = create_backbone("vit_nano", "none", num_classes=5).eval()
    teacher = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=0.0, calibration=x)
    with torch.no_grad():
        assert torch.equal(teacher.forward_features(x), backbone.forward_features(x))
        strong = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=1.0, calibration=x)
        assert not torch.allclose(strong.forward_features(x), backbone.forward_features(x))


def _block_io(teacher, x):
    block, seen = teacher.blocks[-1], {}
    hooks = [block.register_forward_hook(lambda m, a, y: seen.update(out=y)),
             block.inner.register_forward_hook(lambda m, a, y: seen.update(inner=y))]
    with torch.no_grad():
        teacher.forward_features(x)
    for h in hooks:
        h.remove()
    return seen["inner"].double(), seen["out"].double()


def test_planted_shift_has_rank_k_and_bends_k_directions():
    _, x = _inputs()
    strength = 0.8
    teacher = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=strength, calibration=x)
    inner, out = _block_io(teacher, x)
    shift = (out - inner).reshape(-1, teacher.embed_dim)
    assert torch.linalg.matrix_rank(shift, rtol=1e-4).item() == 3  # on every token, not only the class token
    adapter = teacher.blocks[-1].adapter
    v = adapter.up.weight.detach().double()
    v = v / v.norm(dim=0)
    d = adapter.down.weight.detach().double()
    # each unit reads and writes one direction; the three directions are orthonormal
    assert torch.allclose((d / d.norm(dim=1, keepdim=True)).abs(), v.T.abs(), atol=1e-5)
    assert torch.allclose(v.T @ v, torch.eye(3, dtype=v.dtype), atol=1e-5)
    # along each direction the class token keeps 1 - strength * BEND of its linear trend ...
    p, t = inner[:, 0] @ v, out[:, 0] @ v
    slope = ((t - t.mean(0)) * (p - p.mean(0))).mean(0) / p.var(0, unbiased=False)
    assert torch.allclose(slope, torch.full_like(slope, 1 - strength * BEND), atol=1e-3)
    # ... and the bent coordinate is far from any linear function of the frozen class token
    feats = torch.cat([inner[:, 0], torch.ones(len(x), 1, dtype=inner.dtype)], 1)
    fit = feats @ torch.linalg.lstsq(feats, t).solution
    unexplained = (t - fit).var(0) / t.var(0)
    assert (unexplained > 0.1).all(), unexplained


def test_labels_are_balanced_deterministic_and_independent_of_the_run_seed():
    train, test = planted_task(CONFIG)
    again, _ = planted_task(Config(**{**CONFIG.to_dict(), "seed": 7, "epochs": 3}))
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    counts = np.bincount(torch.cat([train.labels, test.labels]).numpy(), minlength=5)
    assert (counts == 160).all()
    assert len(train) == 600 and len(test) == 200 and train.images.dtype == torch.uint8


def test_labels_are_the_teachers_argmax_on_its_most_decisive_images():
    train, test = planted_task(CONFIG)
    teacher, pool, labels, margins, inputs = make_teacher(CONFIG)
    images = torch.cat([train.images, test.images])
    with torch.no_grad():
        logits = teacher(inputs(images))
        assert torch.equal(logits.argmax(1), torch.cat([train.labels, test.labels]))
        # the same head on the frozen backbone (adapter bypassed) labels many of them differently (14% here)
        with adapters_disabled(teacher):
            frozen = teacher(inputs(images)).argmax(1)
    assert (frozen != logits.argmax(1)).float().mean() > 0.1
    # the task is each class's most decisive share of the teacher's pool, exactly
    keep = most_decisive(labels, margins, len(images), 5)
    assert torch.equal(pool[keep], images) and torch.equal(labels[keep], torch.cat([train.labels, test.labels]))
    left = torch.ones(len(pool), dtype=torch.bool)
    left[keep] = False
    for c in range(5):
        assert margins[keep][labels[keep] == c].min() >= margins[left & (labels == c)].max()


def test_planted_directions_are_the_principal_directions_of_the_class_token():
    _, x = _inputs()
    teacher = plant(create_backbone("vit_nano", "none", num_classes=5), rank=3, strength=1.0, calibration=x)
    tokens = class_tokens(create_backbone("vit_nano", "none", num_classes=5).eval(), x).double()
    v = teacher.blocks[-1].adapter.up.weight.detach().double()
    v = v / v.norm(dim=0)
    top = torch.linalg.eigh(torch.cov(tokens.T))[1].flip(1)[:, :3]
    assert torch.allclose((top.T @ v).abs(), torch.eye(3, dtype=v.dtype), atol=1e-4)
