"""Pre-logit (and per-block) features of a ViT on a fixed image subset."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import Images, transform


def pooled(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, d) tokens -> (B, d): the class token, or the mean of patch tokens, as the model pools."""
    if getattr(model, "global_pool", "token") == "token":
        return tokens[:, 0]
    return tokens[:, getattr(model, "num_prefix_tokens", 0):].mean(1)


@torch.inference_mode()
def extract(model: nn.Module, data: Images, idx: np.ndarray, *, size: int, mean, std, device,
            autocast=None, blocks: bool = False, batch_size: int = 512) -> dict[str, np.ndarray]:
    """{"features": (n, d)} float32 pre-logits at `idx` (eval crop), plus "block{i}" (n, d) if `blocks`.

    Per-block features are each block's pooled output tokens (after its adapter, if any).
    """
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {"features": []}
    hooks = []
    if blocks:
        for i, block in enumerate(model.blocks):
            outs[f"block{i}"] = []
            hooks.append(block.register_forward_hook(
                lambda m, a, y, key=f"block{i}": outs[key].append(pooled(model, y).float().cpu())))
    try:
        for x, _ in data.batches(list(torch.from_numpy(idx).split(batch_size)), device):
            with autocast or torch.autocast(device.type, enabled=False):
                h = model.forward_head(model.forward_features(transform(x, size, mean, std, train=False)),
                                       pre_logits=True)
            outs["features"].append(h.float().cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return {k: torch.cat(v).numpy() for k, v in outs.items()}
