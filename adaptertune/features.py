"""Features of a ViT on a fixed image subset: where adapters act, and what the head reads.

"features"  the pooled output of the last block, before the final norm: the residual stream where
            every adapter adds its low-rank shift, so the shift's rank is visible there (the final
            LayerNorm rescales each sample and spreads even a rank-1 shift over all directions).
"prelogits" what the head reads (`forward_head(pre_logits=True)`).
"block{i}"  the pooled output of block i (with `blocks=True`).
"""

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
    """{"features", "prelogits"[, "block{i}"]}: each (n, d) float32 at `idx` (eval crop, no augmentation)."""
    model.eval()
    depth = len(model.blocks)
    keys = {i: f"block{i}" for i in range(depth)} if blocks else {}
    keys.setdefault(depth - 1, None)
    outs: dict[str, list[torch.Tensor]] = {"features": [], "prelogits": [], **{k: [] for k in keys.values() if k}}

    def hook(i):
        def save(module, args, y):
            p = pooled(model, y).float().cpu()
            if keys[i]:
                outs[keys[i]].append(p)
            if i == depth - 1:
                outs["features"].append(p)
        return save

    handles = [model.blocks[i].register_forward_hook(hook(i)) for i in keys]
    try:
        for x, _ in data.batches(list(torch.from_numpy(idx).split(batch_size)), device):
            with autocast or torch.autocast(device.type, enabled=False):
                h = model.forward_head(model.forward_features(transform(x, size, mean, std, train=False)),
                                       pre_logits=True)
            outs["prelogits"].append(h.float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {k: torch.cat(v).numpy() for k, v in outs.items()}
