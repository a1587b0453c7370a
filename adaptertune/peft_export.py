"""A LoRA run in PEFT's own format, for `peft.PeftModel.from_pretrained` (`adaptertune export-peft`)."""

from __future__ import annotations

from pathlib import Path

from .backbones import create_backbone, head_names
from .config import LORA_SPLIT, lora_targets
from .errors import UserError
from .inference import load
from .peft_methods import _peft, lora_config


def export_peft(run_dir, out_dir) -> list:
    """Write a LoRA run as PEFT writes an adapter (adapter_config.json + adapter_model.safetensors).

    `peft.PeftModel.from_pretrained(base, out_dir)` then rebuilds the run's model, where `base` is the
    run's timm backbone with its weights and a head of the run's class count
    (`timm.create_model(name, pretrained=True, num_classes=C)`); the head is PEFT's `modules_to_save`.
    Only whole-Linear targets (qkv, proj, fc1, fc2): PEFT has no q / k / v thirds of a fused qkv.
    Returns the files written.
    """
    trained = load(run_dir, merge=False)
    c = trained.config
    if c.method != "lora":
        raise UserError(f"{run_dir}: a {c.method} run; only LoRA runs export to PEFT's format")
    split = [t for t in lora_targets(c.lora_targets) if t in LORA_SPLIT]
    if split:
        raise UserError(f"{run_dir}: --lora-targets {c.lora_targets}: PEFT has no LoRA on the {','.join(split)} "
                        "third(s) of timm's fused qkv (it can only target the whole qkv); not exportable")
    peft = _peft()
    model = trained.model
    base = create_backbone(trained.backbone, c.weights, len(trained.classes), c.image_size)
    heads = head_names(base)
    wrapped = peft.get_peft_model(base, lora_config(c, len(base.blocks), heads))
    # PEFT's saved keys: "base_model.model.<module>.lora_A.weight" (no adapter name), heads as themselves
    state = {f"base_model.model.{k.replace('.default.', '.')}": v for k, v in model.state_dict().items()
             if ".lora_" in k or k.startswith(tuple(h + "." for h in heads))}
    peft.set_peft_model_state_dict(wrapped, state)
    out = Path(out_dir)
    wrapped.save_pretrained(str(out))
    return sorted(out.iterdir())
