"""Zero-initialized residual low-rank adapters, injected into timm Vision Transformer blocks.

An adapter computes `x + scale * U(act(D x))` with D: d -> r, U: r -> d. With U = 0 (the default
init) it is exactly the identity, so the adapted network starts at the pretrained function.

Placements (timm `Block`: x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))):
  block     after the whole block:            x <- block(x) + adapter branch          (default)
  attn      on the attention branch output:   ls1(a)  <- ls1(a) + adapter branch
  mlp       on the MLP branch output:         ls2(m)  <- ls2(m) + adapter branch
  parallel  beside the MLP, same input:       mlp(z)  <- mlp(z) + adapter branch of z
The wrapped module stays inside its wrapper (PEFT-style wrap and replace); nothing of timm is copied.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .config import parse_blocks

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "identity": nn.Identity}


class Adapter(nn.Module):
    """The bottleneck branch `scale * U(act(D x))`; (..., d) -> (..., d)."""

    def __init__(self, dim: int, rank: int, init: str = "zero", activation: str = "gelu", scale: float = 1.0):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, dim)
        self.scale = scale
        self.enabled = True
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)
        if init == "zero":
            nn.init.zeros_(self.up.weight)
        elif init == "small":
            nn.init.normal_(self.up.weight, std=1e-4)
        elif init == "random":  # naive insertion: both factors random, the start is NOT the backbone
            nn.init.xavier_uniform_(self.up.weight)
        else:
            raise ValueError(f"unknown adapter init {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class Residual(nn.Module):
    """`y = inner(x); y + adapter(y)` (placements block, attn, mlp)."""

    def __init__(self, inner: nn.Module, adapter: Adapter):
        super().__init__()
        self.inner, self.adapter = inner, adapter

    def forward(self, x, *args, **kwargs):
        y = self.inner(x, *args, **kwargs)
        return y + self.adapter(y) if self.adapter.enabled else y


class Parallel(nn.Module):
    """`inner(x) + adapter(x)` (placement parallel: beside the MLP, on its input)."""

    def __init__(self, inner: nn.Module, adapter: Adapter):
        super().__init__()
        self.inner, self.adapter = inner, adapter

    def forward(self, x):
        y = self.inner(x)
        return y + self.adapter(x) if self.adapter.enabled else y


def add_adapters(model: nn.Module, rank: int, placement: str = "block", blocks: str = "all",
                 init: str = "zero", activation: str = "gelu", scale: float = 1.0) -> list[Adapter]:
    """Wrap the chosen blocks of a timm ViT in place; returns the new adapters (one per block)."""
    dim = model.embed_dim
    adapters = []
    for i in parse_blocks(blocks, depth=len(model.blocks)):
        block = model.blocks[i]
        adapter = Adapter(dim, rank, init, activation, scale)
        if placement == "block":
            model.blocks[i] = Residual(block, adapter)
        elif placement in ("attn", "mlp"):
            name = "ls1" if placement == "attn" else "ls2"
            setattr(block, name, Residual(getattr(block, name), adapter))
        elif placement == "parallel":
            block.mlp = Parallel(block.mlp, adapter)
        else:
            raise ValueError(f"unknown placement {placement!r}")
        adapters.append(adapter)
    return adapters


def adapters_of(model: nn.Module) -> list[Adapter]:
    return [m for m in model.modules() if isinstance(m, Adapter)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block the model computes the frozen backbone's function (adapters bypassed)."""
    adapters = adapters_of(model)
    before = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = False
    try:
        yield model
    finally:
        for a, e in zip(adapters, before):
            a.enabled = e


def adapter_params(dim: int, rank: int) -> int:
    """Parameters of one adapter: D (d*r + r) and U (r*d + d) = r(2d+1) + d."""
    return rank * (2 * dim + 1) + dim

