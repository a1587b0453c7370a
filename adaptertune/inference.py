"""Use what was trained: rebuild a run's model from its directory, and predict class names.

`adapter.safetensors` carries everything a run's model needs in its metadata (JSON strings):
"config" (the run's Config) and "adaptertune" (the timm name with its tag, the class names, the
evaluation preprocessing, the adapter options and the package versions). The backbone's weights
come from where the run took them (the hub cache, the checkpoint file, or the fixed random init);
the trained weights (adapters + head, or everything for full fine-tuning) from the file.
Nothing is unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ADAPTER_ONLY, Config
from .errors import UserError
from .preprocess import Preprocess

FORMAT = 1


def metadata(config: Config, model: str, classes: list[str], pre: Preprocess, env: dict) -> dict[str, str]:
    """The metadata `train_run` writes into adapter.safetensors."""
    info = {"format": FORMAT, "model": model, "method": config.method, "classes": list(classes),
            "preprocess": pre.to_dict(), "adapter": {k: getattr(config, k) for k in ADAPTER_ONLY},
            "versions": env}
    return {"config": json.dumps(config.to_dict()), "adaptertune": json.dumps(info)}


@dataclass(frozen=True, repr=False)
class Trained:
    """A trained run's model, ready for inference: `logits(uint8 batch)`, `predict(paths)`."""

    model: nn.Module
    classes: list[str]
    preprocess: Preprocess
    config: Config
    backbone: str  # timm name with its tag

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> (B, classes) float32 logits, through the model's own eval preprocessing."""
        device = next(self.model.parameters()).device
        return self.model(self.preprocess.eval(images.to(device))).float()

    def predict(self, paths, top: int = 5) -> list[list[tuple[str, float]]]:
        """For each image file, the `top` (class name, probability) pairs, most probable first."""
        out = []
        for path in paths:
            p = self.logits(read_image(path)[None]).softmax(1)[0]
            values, idx = p.topk(min(top, len(self.classes)))
            out.append([(self.classes[i], v) for i, v in zip(idx.tolist(), values.tolist())])
        return out

    def __repr__(self) -> str:
        c = self.config
        what = {"adapter": f"adapter r{c.rank} ({c.placement}, blocks {c.blocks})",
                "lora": f"lora r{c.rank} ({c.lora_targets}, blocks {c.blocks})",
                "vpt": f"vpt {c.rank} tokens ({c.vpt_mode})"}.get(c.method, c.method)
        return (f"Trained({self.backbone}, {what}, {len(self.classes)} classes, input {self.preprocess.input_size}px "
                f"crop {self.preprocess.crop_pct} {self.preprocess.interpolation})")


def read_image(path) -> torch.Tensor:
    """(3, H, W) uint8 RGB from an image file; UserError when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {path}: {e}".splitlines()[0]) from None


def load(run_dir, device="cpu", merge: bool = True) -> Trained:
    """Rebuild the model a run trained (backbone with its weights, adapters / LoRA / prompts, head) in
    eval mode; a LoRA run's updates folded into its weights unless `merge=False`."""
    from safetensors import SafetensorError, safe_open

    from .backbones import add_method, create_backbone, head_names, is_trainable

    path = Path(run_dir) / "adapter.safetensors"
    if not path.is_file():
        raise UserError(f"{run_dir}: no adapter.safetensors (not a finished run directory?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if "adaptertune" not in meta:
        raise UserError(f"{path} was written by an older adaptertune (no model metadata); retrain the run")
    info, config = json.loads(meta["adaptertune"]), Config.from_dict(json.loads(meta["config"]))
    classes, pre = info["classes"], Preprocess(**{**info["preprocess"], "mean": tuple(info["preprocess"]["mean"]),
                                                   "std": tuple(info["preprocess"]["std"])})
    model = create_backbone(info["model"], config.weights, len(classes), config.image_size)
    model.reset_classifier(len(classes))
    add_method(model, config)  # adapters, LoRA or VPT prompts as the run trained them
    heads = head_names(model)
    trained = {n for n, _ in model.named_parameters() if is_trainable(n, config.method, heads)}
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    missing = trained - set(state)
    if unexpected or missing:
        raise UserError(f"{path}: weights do not fit {info['model']} "
                        f"({len(unexpected)} unexpected, {len(missing)} missing)")
    model.requires_grad_(False)
    if merge and config.method == "lora":
        from .peft_methods import merge as merge_lora

        merge_lora(model)
    return Trained(model.to(device).eval(), classes, pre, config, info["model"])


def predict_command(args) -> int:
    """`adaptertune predict RUN IMAGES... --top K`: the top-K class names per image."""
    trained = load(args.run, args.device)
    for path, preds in zip(args.images, trained.predict(args.images, args.top)):
        print(path)
        for name, p in preds:
            print(f"  {100 * p:6.2f}%  {name}")
    return 0
