"""Zero-initialized residual low-rank adapters, injected into timm Vision Transformer blocks.

An adapter computes `x + scale * U(act(D x))` with D: d -> r, U: r -> d. With U = 0 (the default
init) it is exactly the identity, so the adapted network starts at the pretrained function.

Placements (timm `Block`: x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))):
  block     after the whole block:            x <- block(x) + adapter branch          (default)
  attn      on the attention branch output:   ls1(a)  <- ls1(a) + adapter branch
  mlp       on the MLP branch output:         ls2(m)  <- ls2(m) + adapter branch
  parallel  beside the MLP, same input:       mlp(z)  <- mlp(z) + adapter branch of z
  attn+mlp  both attn and mlp (two adapters per block, Houlsby's)
The scale is fixed, or learned (`scaling`: one scalar, or one per channel as in Adapter+).
config.PRESETS name published variants by these options (`--preset`).
The wrapped module stays inside its wrapper (PEFT-style wrap and replace); nothing of timm is copied.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .config import parse_blocks
from .errors import UserError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "identity": nn.Identity}


class Adapter(nn.Module):
    """The bottleneck branch `scale * U(act(D x))`; (..., d) -> (..., d)."""

    def __init__(self, dim: int, rank: int, init: str = "zero", activation: str = "gelu", scale: float = 1.0,
                 scaling: str = "fixed"):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, dim)
        self.scale = scale
        if scaling != "fixed":  # learned, starting at `scale`: one scalar or one value per channel
            self.gain = nn.Parameter(torch.full((dim,) if scaling == "channel" else (), float(scale)))
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
        elif init == "houlsby":  # near identity: both factors N(0, 0.01) truncated at 2 sigma
            nn.init.trunc_normal_(self.down.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.trunc_normal_(self.up.weight, std=1e-2, a=-2e-2, b=2e-2)
        else:
            raise ValueError(f"unknown adapter init {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.act(self.down(x)))
        return y * (self.gain if hasattr(self, "gain") else self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}" + (f", learned {tuple(self.gain.shape) or 'scalar'}" if hasattr(self, "gain") else "")


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
                 init: str = "zero", activation: str = "gelu", scale: float = 1.0,
                 scaling: str = "fixed") -> list[Adapter]:
    """Wrap the chosen blocks of a timm ViT in place; returns the new adapters (one per block).

    Raises UserError, before changing the model, when the options would leave the run without an
    adapter that trains: a blocks spec that selects no block of this depth, a placement the blocks
    do not have (e.g. `attn` on a block without `ls1`), a rank below 1 or a scale of 0.
    """
    chosen = check_adapters(model, rank, placement, blocks, scale)
    dim = model.embed_dim
    adapters = []
    for i in chosen:
        block = model.blocks[i]
        for where in placement.split("+"):
            adapter = Adapter(dim, rank, init, activation, scale, scaling)
            if where == "block":
                model.blocks[i] = Residual(block, adapter)
            elif where in ("attn", "mlp"):
                name = _SLOT[where]
                setattr(block, name, Residual(getattr(block, name), adapter))
            else:
                block.mlp = Parallel(block.mlp, adapter)
            adapters.append(adapter)
    return adapters


_SLOT = {"attn": "ls1", "mlp": "ls2", "parallel": "mlp"}  # the submodule each placement wraps


def check_adapters(model: nn.Module, rank: int, placement: str, blocks: str, scale: float) -> list[int]:
    """The block indices `add_adapters` would adapt; UserError naming the option that cannot take effect."""
    if rank < 1:
        raise UserError(f"--rank {rank}: an adapter needs rank >= 1")
    if not math.isfinite(scale) or scale == 0:
        raise UserError(f"--scale {scale:g}: the adapter's output would be {'zero' if scale == 0 else 'not finite'}, "
                        "so it could not train; use a finite non-zero scale")
    if placement not in ("block", *_SLOT, "attn+mlp"):
        raise UserError(f"--placement {placement!r}: choose one of block, {', '.join(_SLOT)}, attn+mlp")
    depth = len(model.blocks)
    chosen = parse_blocks(blocks, depth=depth)
    if not chosen:
        raise UserError(f"--blocks {blocks}: selects no block of this {depth}-block backbone, so no adapter "
                        f"would be added (every:K needs K <= {depth})")
    lacking = [(i, _SLOT[w]) for i in chosen for w in placement.split("+")
               if w in _SLOT and not isinstance(getattr(model.blocks[i], _SLOT[w], None), nn.Module)]
    if lacking:
        (i, name), kind = lacking[0], type(model.blocks[lacking[0][0]]).__name__
        raise UserError(f"--placement {placement}: block {i} ({kind}) has no `{name}` submodule to adapt; "
                        "use --placement block")
    return chosen


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


def adapter_params(dim: int, rank: int, scaling: str = "fixed") -> int:
    """Parameters of one adapter: D (d*r + r) and U (r*d + d) = r(2d+1) + d, plus a learned gain (1 or d)."""
    return rank * (2 * dim + 1) + dim + {"fixed": 0, "scalar": 1, "channel": dim}[scaling]

