"""timm ViT backbones: creation, weights (hub / local file / none), freezing, parameter accounting."""

from __future__ import annotations

import difflib
import socket
from pathlib import Path

import timm
import torch
from torch import nn

from .adapters import add_adapters
from .config import Config
from .errors import UserError

# Tiny ViTs for CPU tests and the offline demo: a registered timm architecture with overrides.
# timm's "jax" init keeps a random network's class token varying across inputs (std ~1 at the
# last block, against ~0.01 with the default init), so its features are worth adapting.
TINY = {
    "vit_micro": dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4,
                      weight_init="jax"),
    "vit_nano": dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                     weight_init="jax"),
}
HUB_HOST = "huggingface.co"


def known_backbones() -> list[str]:
    return sorted(TINY) + timm.list_models("vit_*") + timm.list_models("deit*")


def input_size(name: str, image_size: int = 0) -> int:
    """The input resolution a run uses: `image_size`, or the architecture's own."""
    if image_size:
        return image_size
    if name in TINY:
        return TINY[name]["img_size"]
    cfg = timm.get_pretrained_cfg(name)
    return cfg.input_size[-1] if cfg else 224


def create_backbone(name: str, weights: str = "hub", num_classes: int = 10, image_size: int = 0) -> nn.Module:
    """A timm ViT with a fresh `num_classes` head; weights 'hub', 'none' or a checkpoint path."""
    if name in TINY:
        kwargs = dict(TINY[name])
        arch = kwargs.pop("arch")
    elif name in timm.list_models() and name.startswith(("vit_", "deit")):
        arch, kwargs = name, {}
    else:
        close = difflib.get_close_matches(name, known_backbones(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('vit_*')"
        raise UserError(f"unknown backbone {name!r}{hint}")
    if image_size:
        kwargs["img_size"] = image_size
    kwargs["num_classes"] = num_classes

    if weights == "none":  # a fixed random backbone: the same function for every run and the planted teacher
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(arch, pretrained=False, **kwargs)
    if weights == "hub":
        if name in TINY:
            raise UserError(f"{name} is a test architecture with no pretrained weights; pass --weights none")
        if not _hub_reachable():
            raise UserError(f"cannot reach the model hub for {name}'s pretrained weights (offline?); "
                            "pass --weights PATH (a local checkpoint) or --weights none")
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:  # download / cache problems from huggingface_hub or urllib
            raise UserError(f"could not load pretrained weights for {name}: {e}".splitlines()[0]) from None
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: no such file (use hub, none or a checkpoint path)")
    try:  # timm's own loader: handles original checkpoint formats, position-embedding resizing, head removal
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    except Exception as e:
        raise UserError(f"--weights {weights}: not a checkpoint for {name} ({e})".splitlines()[0]) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_model(config: Config, num_classes: int) -> tuple[nn.Module, dict]:
    """Backbone + fresh head (+ adapters), frozen as the method says; returns (model, param counts).

    Counts: trainable, total (of the model as trained), full_trainable (backbone + head: what full
    fine-tuning trains, the study's denominator) and trainable_fraction = trainable / full_trainable.
    """
    model = create_backbone(config.backbone, config.weights, num_classes, config.image_size)
    model.reset_classifier(num_classes)  # a fresh head drawn from the run's seed
    full_trainable = sum(p.numel() for p in model.parameters())
    if config.method == "adapter":
        add_adapters(model, config.rank, config.placement, config.blocks, config.init, config.activation, config.scale)
    for name, p in model.named_parameters():
        p.requires_grad = config.method == "full" or name.startswith("head.") or ".adapter." in name
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = dict(trainable_params=trainable, total_params=sum(p.numel() for p in model.parameters()),
                  full_trainable_params=full_trainable, trainable_fraction=trainable / full_trainable)
    return model, counts


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes (adapters + head; everything for full fine-tuning)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n in names}
