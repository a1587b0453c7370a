"""The other parameter-efficient families on the same runner: LoRA, BitFit and VPT.

- **LoRA** (`method="lora"`): `W x + (alpha / r) B A x` on the chosen Linears of each chosen block,
  B zero-initialised, so the start is the backbone to the last bit. Whole Linears (`qkv`, `proj`,
  `fc1`, `fc2`) go through PEFT (`inject_adapter_in_model`: PEFT's own LoRA layers, its init, its
  merge), so a run exports in PEFT's format (peft_export.py). The targets `q`, `k`, `v` are thirds of
  timm's fused `qkv` Linear (d -> 3d): PEFT can only put one factor pair on the whole 3d output, so
  `QKVLoRA` (ours) gives each chosen third its own (A, B) and leaves the others untouched, as
  LoRA's paper (W_q, W_v) and LoRA-ViT do. Those runs cannot be exported to PEFT.
- **BitFit** (`method="bitfit"`): every bias of the backbone (LayerNorm biases included) and the
  head train; nothing is added, so the start is the backbone.
- **VPT** (`method="vpt"`, Jia et al. 2022): `rank` learned prompt tokens inserted after the prefix
  tokens (class / register / distillation) before the first block ("shallow"), or new ones before
  every block ("deep"), removed again after the last block, so the final norm and the model's own
  pooling see the usual tokens. Prompts change every token's attention, so VPT does NOT start at the
  backbone; with its prompts disabled (`disabled`) the model is the backbone exactly.

`rank` is each family's capacity axis (LoRA's rank, VPT's token count; BitFit has none).
"""

from __future__ import annotations

import contextlib
import math
import re

import torch
from torch import nn

from .adapters import adapters_disabled
from .config import LORA_SPLIT, Config, lora_targets, parse_blocks
from .errors import UserError

PEFT_MISSING = 'LoRA on whole Linears (qkv, proj, fc1, fc2) needs PEFT: pip install -e ".[peft]"'
_LINEAR_PATH = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError(PEFT_MISSING) from None
    return peft


# -- LoRA ------------------------------------------------------------------------------------------------

class QKVLoRA(nn.Module):
    """timm's fused `qkv` Linear (d -> 3d) with a LoRA pair on each chosen third (q, k, v).

    `y = qkv(x)`, then y[..., i*d:(i+1)*d] += (alpha / r) B_i A_i x for each chosen i. A_i is
    Kaiming-uniform (PEFT's init), B_i zero: at init the output is qkv(x) to the last bit.
    """

    def __init__(self, base: nn.Linear, rank: int, parts: list[str], alpha: float):
        super().__init__()
        if base.out_features != 3 * base.in_features:
            raise UserError(f"--lora-targets {','.join(parts)}: this qkv maps {base.in_features} -> "
                            f"{base.out_features}, not d -> 3d; use --lora-targets qkv")
        self.base, self.parts, self.scaling = base, list(parts), alpha / rank
        d = base.in_features
        self.lora_A = nn.ModuleDict({p: nn.Linear(d, rank, bias=False) for p in parts})
        self.lora_B = nn.ModuleDict({p: nn.Linear(rank, d, bias=False) for p in parts})
        for p in parts:
            nn.init.kaiming_uniform_(self.lora_A[p].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[p].weight)
        self.enabled, self.merged = True, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled or self.merged:
            return y
        thirds = list(y.chunk(3, dim=-1))
        for p in self.parts:
            i = LORA_SPLIT.index(p)
            thirds[i] = thirds[i] + self.lora_B[p](self.lora_A[p](x)) * self.scaling
        return torch.cat(thirds, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold each (alpha / r) B_i A_i into its third of the qkv weight; forward is then one Linear."""
        if self.merged:
            return
        d = self.base.in_features
        for p in self.parts:
            i = LORA_SPLIT.index(p)
            delta = self.lora_B[p].weight @ self.lora_A[p].weight * self.scaling
            self.base.weight[i * d:(i + 1) * d] += delta.to(self.base.weight.dtype)
        self.merged = True


def lora_config(config: Config, depth: int, heads: tuple[str, ...] = ()):
    """PEFT's LoraConfig for the run's whole-Linear targets (None when it has none)."""
    linears = [t for t in lora_targets(config.lora_targets) if t in _LINEAR_PATH]
    if not linears:
        return None
    peft = _peft()
    chosen = parse_blocks(config.blocks, depth)
    pattern = rf"blocks\.({'|'.join(map(str, chosen))})\.({'|'.join(re.escape(_LINEAR_PATH[t]) for t in linears)})"
    return peft.LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, bias="none",
                           target_modules=pattern, init_lora_weights=True,
                           modules_to_save=list(heads) or None)


def add_lora(model: nn.Module, config: Config) -> None:
    """LoRA on the chosen blocks' targets, in place (PEFT for whole Linears, QKVLoRA for q/k/v)."""
    targets = lora_targets(config.lora_targets)
    depth = len(model.blocks)
    chosen = parse_blocks(config.blocks, depth)
    if not chosen:
        raise UserError(f"--blocks {config.blocks}: selects no block of this {depth}-block backbone")
    for i in chosen:
        for t in targets:
            path = _LINEAR_PATH.get(t, "attn.qkv")
            if not isinstance(_submodule(model.blocks[i], path), nn.Linear):
                raise UserError(f"--lora-targets {t}: block {i} ({type(model.blocks[i]).__name__}) has no Linear "
                                f"`{path}` (LoRA targets: {', '.join(LORA_SPLIT + tuple(_LINEAR_PATH))})")
    attn = model.blocks[chosen[0]].attn
    if ({"qkv", *LORA_SPLIT} & set(targets) and getattr(attn, "q_bias", None) is not None
            and not getattr(attn, "qkv_bias_separate", False)):
        # Eva / Beit with separate q, v biases compute F.linear(x, qkv.weight, bias): a wrapped qkv is bypassed
        raise UserError(f"--lora-targets {config.lora_targets}: {type(model.blocks[chosen[0]]).__name__}'s attention "
                        "reads qkv's weight directly (separate q/v biases), so a LoRA there would have no effect; "
                        "use proj, fc1 or fc2")
    parts = [t for t in targets if t in LORA_SPLIT]
    if parts:
        for i in chosen:
            attn = model.blocks[i].attn
            attn.qkv = QKVLoRA(attn.qkv, config.rank, parts, config.lora_alpha)
    cfg = lora_config(config, depth)
    if cfg is not None:
        _peft().inject_adapter_in_model(cfg, model)


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def merge(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its weight (PEFT's merge for its layers, ours for q/k/v)."""
    for m in model.modules():
        if isinstance(m, QKVLoRA):
            m.merge()
    for m in _lora_layers(model):
        m.merge()
    return model


# -- VPT -------------------------------------------------------------------------------------------------

class PromptedBlocks(nn.Sequential):
    """`model.blocks` with VPT prompts: the same block modules (same names, `blocks.{i}`), plus
    `vpt_prompts` (depth or 1, tokens, d) inserted after the `prefix` tokens and removed at the end."""

    def __init__(self, blocks: nn.Sequential, tokens: int, deep: bool, prefix: int, patch: int, dim: int):
        super().__init__(*blocks)
        # VPT's init: uniform(-v, v), v = sqrt(6 / (3 * patch^2 + d)) (Xavier over the patch embedding's fan)
        v = math.sqrt(6.0 / (3 * patch * patch + dim))
        self.vpt_prompts = nn.Parameter(torch.empty(len(blocks) if deep else 1, tokens, dim).uniform_(-v, v))
        self.prefix, self.deep, self.enabled = prefix, deep, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return super().forward(x)
        p, t = self.prefix, self.vpt_prompts.shape[1]
        for i, block in enumerate(self):
            if i == 0 or self.deep:
                prompts = self.vpt_prompts[i if self.deep else 0].to(x.dtype).expand(len(x), -1, -1)
                x = torch.cat([x[:, :p], prompts, x[:, p + (t if i else 0):]], dim=1)
            x = block(x)
        return self.strip(x)

    def strip(self, x: torch.Tensor) -> torch.Tensor:
        """A block's output without the prompt tokens (unchanged when the prompts are disabled)."""
        if not self.enabled or x.shape[1] < self.prefix + self.vpt_prompts.shape[1]:
            return x
        return torch.cat([x[:, :self.prefix], x[:, self.prefix + self.vpt_prompts.shape[1]:]], dim=1)


def add_vpt(model: nn.Module, tokens: int, mode: str = "shallow") -> PromptedBlocks:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):  # Eva, Beit, RelPos call their blocks one by one
        raise UserError(f"--method vpt supports timm VisionTransformer models (ViT, DeiT, DINOv2, CLIP, ...), "
                        f"not {type(model).__name__}")
    patch = model.patch_embed.patch_size[0]
    model.blocks = PromptedBlocks(model.blocks, tokens, mode == "deep", model.num_prefix_tokens, patch,
                                  model.embed_dim)
    return model.blocks


# -- one entry point for build_model and load --------------------------------------------------------------

def add_method(model: nn.Module, config: Config) -> None:
    """Add what `config.method` trains beyond the backbone and head (nothing for bitfit)."""
    if config.method == "lora":
        add_lora(model, config)
    elif config.method == "vpt":
        add_vpt(model, config.rank, config.vpt_mode)


def is_trainable(name: str, method: str) -> bool:
    """Whether a (non-head) parameter trains under `method`."""
    if method == "bitfit":
        return name.endswith("bias")
    if method == "lora":
        return ".lora_" in name
    if method == "vpt":
        return name == "blocks.vpt_prompts"
    return ".adapter." in name


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Within the block the model computes the frozen backbone's function: adapters bypassed, LoRA
    updates off, VPT prompts not inserted. (BitFit has nothing to disable: its start is the backbone.)"""
    ours = [m for m in model.modules() if isinstance(m, (QKVLoRA, PromptedBlocks))]
    peft_layers = _lora_layers(model)
    if any(getattr(m, "merged", False) for m in ours + peft_layers):
        raise ValueError("a merged LoRA cannot be disabled")
    before = [m.enabled for m in ours]
    grads = [(p, p.requires_grad) for p in model.parameters()]  # PEFT's toggle also resets requires_grad
    for m in ours:
        m.enabled = False
    for m in peft_layers:
        m.enable_adapters(False)
    try:
        with adapters_disabled(model):
            yield model
    finally:
        for m, e in zip(ours, before):
            m.enabled = e
        for m in peft_layers:
            m.enable_adapters(True)
        for p, g in grads:
            p.requires_grad_(g)

