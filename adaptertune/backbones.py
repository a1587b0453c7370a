"""timm ViT backbones: names (any `arch` or `arch.tag` timm resolves), weights, freezing, counts.

Weights come through timm and huggingface_hub alone ('hub'): their cache, `HF_HUB_OFFLINE`,
`HF_ENDPOINT` and proxies work as those libraries define them; or from a local checkpoint file
(PATH); or not at all ('none': a fixed random network, the same for every run).

Supported families, the timm model classes whose blocks take our adapters unchanged:
VisionTransformer and its subclasses (augreg, DeiT incl. distilled, DINO, DINOv2 with registers,
CLIP, SigLIP `map`, ...), Eva (EVA-02, DINOv3, PE), Beit and VisionTransformerRelPos.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from .adapters import add_adapters
from .config import Config
from .errors import UserError
from .preprocess import Preprocess

# Tiny ViTs for CPU tests and the offline demo: a registered timm architecture with overrides.
# timm's "jax" init keeps a random network's class token varying across inputs (std ~1 at the
# last block, against ~0.01 with the default init), so its features are worth adapting.
TINY = {
    "vit_micro": dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4,
                      weight_init="jax"),
    "vit_nano": dict(arch="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                     weight_init="jax"),
}
# The tiny ViTs' evaluation preprocessing (no checkpoint defines one): resize 256 / crop 224, bilinear.
TINY_PREPROCESS = dict(crop_pct=0.875, interpolation="bilinear", crop_mode="center")


def families() -> tuple[type, ...]:
    from timm.models.beit import Beit
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    return VisionTransformer, Eva, Beit, VisionTransformerRelPos


def known_backbones() -> list[str]:
    return sorted(TINY) + timm.list_models("vit_*") + timm.list_models("deit*") + timm.list_models(
        pretrained=True)


def resolve(name: str) -> tuple[str, dict]:
    """(the name timm.create_model takes, its extra kwargs) for `name`; UserError when unknown."""
    if name in TINY:
        kwargs = dict(TINY[name])
        arch = kwargs.pop("arch")
        return arch, {**kwargs, "pretrained_cfg_overlay": TINY_PREPROCESS}
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(name, known_backbones(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('vit_*')"
        raise UserError(f"unknown backbone {name!r}{hint}")
    try:
        timm.get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag"
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise UserError(f"unknown pretrained tag {tag!r} for {arch}; "
                        f"{'timm has: ' + ', '.join(tags) if tags else 'timm has no pretrained weights for it'}") from None
    return name, {}


def data_config(name: str, image_size: int = 0) -> dict:
    """timm's data config for `name` (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
    timm_name, kwargs = resolve(name)
    cfg = timm.get_pretrained_cfg(timm_name)
    cfg = {**(cfg.to_dict() if cfg else {}), **kwargs.get("pretrained_cfg_overlay", {})}
    size = image_size or kwargs.get("img_size")
    return resolve_data_config({"img_size": size} if size else {}, pretrained_cfg=cfg)


def preprocess(name: str, image_size: int = 0) -> Preprocess:
    """The model's own evaluation preprocessing (timm's data config)."""
    return Preprocess.from_data_config(data_config(name, image_size))


def input_size(name: str, image_size: int = 0) -> int:
    """The input resolution a run uses: `image_size`, or the architecture's own."""
    return data_config(name, image_size)["input_size"][-1]


def create_backbone(name: str, weights: str = "hub", num_classes: int = 10, image_size: int = 0,
                    **overrides) -> nn.Module:
    """A timm ViT with a fresh `num_classes` head; weights 'hub', 'none' or a checkpoint path.

    `overrides` go to timm.create_model (tests build tiny real architectures: embed_dim, depth, ...).
    """
    timm_name, kwargs = resolve(name)
    kwargs.update(overrides, num_classes=num_classes)
    if image_size:
        kwargs["img_size"] = image_size
    if weights == "none":  # a fixed random backbone: the same function for every run and the planted teacher
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
    elif weights == "hub":
        if name in TINY:
            raise UserError(f"{name} is a test architecture with no pretrained weights; pass --weights none")
        model = _from_hub(name, timm_name, kwargs)
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--weights {weights}: no such file (use hub, none or a checkpoint path)")
        overlay = {**kwargs.pop("pretrained_cfg_overlay", {}), "file": str(path)}
        try:  # timm's own loader: original checkpoint formats, position-embedding resizing, head removal
            model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as e:
            raise UserError(f"--weights {weights}: not a checkpoint for {name} ({e})".splitlines()[0]) from None
    if not isinstance(model, families()):
        raise UserError(f"backbone {name} is a timm {type(model).__name__}: adapters support VisionTransformer "
                        "(ViT, DeiT, DINO/DINOv2, CLIP, SigLIP ...), Eva (EVA-02, DINOv3), Beit and "
                        "VisionTransformerRelPos models")
    return model


def _from_hub(name: str, timm_name: str, kwargs: dict) -> nn.Module:
    """timm.create_model(pretrained=True): huggingface_hub decides cache, offline mode and endpoint."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE or no route) and not in the cache
        raise UserError(
            f"pretrained weights for {name} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the "
            f"hub cannot be reached: on a machine with network run python -c \"import timm; timm.create_model("
            f"'{name}', pretrained=True)\" and copy its cache here (or set HF_HOME / HF_ENDPOINT), or pass "
            "--weights PATH") from None
    except Exception as e:  # other download / cache problems from huggingface_hub or urllib
        raise UserError(f"could not load pretrained weights for {name}: {e}".splitlines()[0]) from None


def describe(model: nn.Module, name: str, weights: str) -> dict:
    """What config.json's "resolved" records about the backbone: timm name with tag, weights' source."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    tag = cfg.get("tag")
    resolved = name if name in TINY else f"{cfg.get('architecture', name)}{'.' + tag if tag else ''}"
    if weights == "hub":
        source = f"hf-hub:{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg.get("url") or "timm"
    elif weights == "none":
        source = "none (fixed random init, seed 0)"
    else:
        source = f"file:{Path(weights).resolve()}"
    return {"model": resolved, "weights_source": source}


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the classifier modules (`head`, and `head_dist` for distilled DeiT)."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    ids = {id(h) for h in heads}
    return tuple(n for n, m in model.named_modules() if id(m) in ids)


def is_trainable(name: str, method: str, heads: tuple[str, ...]) -> bool:
    from .peft_methods import is_trainable as trains  # adapters, LoRA factors, biases, prompts

    return method == "full" or name.startswith(tuple(h + "." for h in heads)) or trains(name, method)


def add_method(model: nn.Module, config: Config) -> None:
    """Add the modules `config.method` trains besides the head (adapters, LoRA, VPT prompts) in place."""
    from .peft_methods import add_method as add_other

    if config.method == "adapter":
        add_adapters(model, config.rank, config.placement, config.blocks, config.init, config.activation,
                     config.scale, config.adapter_scaling)
    add_other(model, config)


def build_model(config: Config, num_classes: int, **overrides) -> tuple[nn.Module, dict]:
    """Backbone + fresh head (+ adapters), frozen as the method says; returns (model, param counts).

    Counts: trainable, total (of the model as trained), full_trainable (backbone + head: what full
    fine-tuning trains, the study's denominator) and trainable_fraction = trainable / full_trainable.
    """
    model = create_backbone(config.backbone, config.weights, num_classes, config.image_size, **overrides)
    model.reset_classifier(num_classes)  # a fresh head drawn from the run's seed
    full_trainable = sum(p.numel() for p in model.parameters())
    add_method(model, config)
    heads = head_names(model)
    for name, p in model.named_parameters():
        p.requires_grad = is_trainable(name, config.method, heads)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = dict(trainable_params=trainable, total_params=sum(p.numel() for p in model.parameters()),
                  full_trainable_params=full_trainable, trainable_fraction=trainable / full_trainable)
    return model, counts


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes (adapters + head; everything for full fine-tuning)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n in names}
