"""Features of a ViT on a fixed image subset: where adapters act, and what the head reads.

"features"  the pooled output of the last block, before the final norm: the residual stream where
            every adapter adds its low-rank shift, so the shift's rank is visible there (the final
            LayerNorm rescales each sample and spreads even a rank-1 shift over all directions).
            Pooled linearly, as the model pools where it can (`shift_pool`).
"prelogits" what the head reads: timm's own `forward_head(pre_logits=True)` (class token, average,
            attention pooling `map`, register tokens skipped by `num_prefix_tokens`).
"block{i}"  the pooled output of block i (with `blocks=True`).

Always computed in float32 with autocast off, whatever precision the run trains in: the spectrum's
noise floor assumes float32 features (bf16 rounding would add dozens of spurious directions).
"""

from __future__ import annotations

import numpy as np
import torch
from timm.layers import global_pool_nlc
from torch import nn

from .data import Images
from .preprocess import Preprocess

PRECISION = "fp32"


def shift_pool(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, d) tokens -> (B, d), linear in the tokens so a low-rank shift stays low-rank.

    The model's own pooling where it is linear: the class token ("token"; the mean of class and
    distillation tokens for distilled DeiT, as its head reads them), the mean of the patch tokens
    ("avg", register tokens excluded). Nonlinear pools ("map" attention pooling, "max") read the
    mean of the patch tokens instead; their head's input is in "prelogits".
    """
    if getattr(model, "dist_token", None) is not None:
        return (tokens[:, 0] + tokens[:, 1]) / 2
    kind = "token" if getattr(model, "global_pool", "token") == "token" else "avg"
    return global_pool_nlc(tokens, pool_type=kind, num_prefix_tokens=getattr(model, "num_prefix_tokens", 0),
                           reduce_include_prefix=getattr(model, "pool_include_prefix", False))


@torch.inference_mode()
def extract(model: nn.Module, data: Images, idx: np.ndarray, *, preprocess: Preprocess, device,
            blocks: bool = False, batch_size: int = 512) -> dict[str, np.ndarray]:
    """{"features", "prelogits"[, "block{i}"]}: each (n, d) float32 at `idx` (eval crop, no augmentation)."""
    model.eval()
    depth = len(model.blocks)
    keys = {i: f"block{i}" for i in range(depth)} if blocks else {}
    keys.setdefault(depth - 1, None)
    outs: dict[str, list[torch.Tensor]] = {"features": [], "prelogits": [], **{k: [] for k in keys.values() if k}}

    def hook(i):
        def save(module, args, y):
            y = model.blocks.strip(y) if hasattr(model.blocks, "strip") else y  # VPT: without its prompts
            p = shift_pool(model, y).float().cpu()
            if keys[i]:
                outs[keys[i]].append(p)
            if i == depth - 1:
                outs["features"].append(p)
        return save

    handles = [model.blocks[i].register_forward_hook(hook(i)) for i in keys]
    try:
        for x, _ in data.batches(list(torch.from_numpy(idx).split(batch_size)), device):
            with torch.autocast(torch.device(device).type, enabled=False):
                h = model.forward_head(model.forward_features(preprocess.eval(x)), pre_logits=True)
            outs["prelogits"].append(h.float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {k: torch.cat(v).numpy() for k, v in outs.items()}
