"""The typed run configuration: every default is the reference protocol (DESIGN.md).

`Config` is serialised as config.json in each run directory; the command line maps onto its
fields one to one (`--batch-size` is `batch_size`). Imports no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from .errors import UserError

METHODS = ("adapter", "head", "full", "lora", "bitfit", "vpt")
PLACEMENTS = ("block", "attn", "mlp", "parallel", "attn+mlp")
INITS = ("zero", "small", "random", "houlsby")
SCALINGS = ("fixed", "scalar", "channel")
VPT_MODES = ("shallow", "deep")
ACTIVATIONS = ("gelu", "relu", "identity")
PRECISIONS = ("auto", "fp32", "bf16")

# What a run's identity leaves out (`Config.identity`): options that decide how a run executes, not
# what it computes, and options that the method or the dataset does not read.
EXECUTION = ("data_root", "device", "compile", "cache_features", "workers", "log_every", "block_features", "quiet")
ADAPTER_ONLY = ("rank", "placement", "blocks", "init", "activation", "scale")
# The fields each method reads beyond the shared ones; `identity` leaves out the others' fields.
# `rank` is every family's capacity axis: the adapter's bottleneck, LoRA's rank, VPT's prompt tokens.
METHOD_FIELDS = {"adapter": ADAPTER_ONLY + ("adapter_scaling",), "lora": ("rank", "blocks", "lora_targets", "lora_alpha"),
                 "vpt": ("rank", "vpt_mode")}
SYNTHETIC_ONLY = ("num_classes", "train_samples", "test_samples")  # read by the synthetic and planted tasks
PLANTED_ONLY = ("planted_rank", "planted_strength")

# Inclusive bounds of the numeric fields (None: unbounded on that side); `validate` checks them.
# The upper bounds stop values no run can use (a seed beyond what the generators take, an epoch
# count that never ends) before any run starts; what depends on the backbone is in preflight.py.
RANGES = {
    "rank": (0, 65536), "scale": (-1e6, 1e6), "seed": (0, 2**31 - 1), "epochs": (1, 100_000),
    "batch_size": (1, 2**20), "lr": (0.0, None), "weight_decay": (0.0, 1e3), "warmup_epochs": (0.0, 100_000.0),
    "clip_grad": (0.0, 1e6), "label_smoothing": (0.0, 1.0), "image_size": (0, 4096), "val_fraction": (0.0, 1.0),
    "feature_samples": (1, 10**7), "num_classes": (2, 100_000), "train_samples": (2, 10**7),
    "test_samples": (1, 10**7), "planted_rank": (0, 65536), "planted_strength": (0.0, 1e6), "workers": (0, 256),
    "log_every": (0, 10**9), "lora_alpha": (0.0, 1e6),
}
_KINDS = {"int": int, "float": float, "bool": bool, "str": str}  # field annotations (strings) -> types

# Published bottleneck variants as our adapter options; explicit flags override a preset's values.
PRESETS = {
    # Steitz & Roth 2024: Post-Adapter (on the FFN output, inside its residual), learned channel-wise
    # scaling, Houlsby init, GELU, no norm.
    "adapter-plus": dict(placement="mlp", adapter_scaling="channel", init="houlsby", activation="gelu", scale=1.0),
    # Chen et al. 2022: parallel to the MLP, fixed scale 0.1, ReLU, zero up-projection.
    "adaptformer": dict(placement="parallel", adapter_scaling="fixed", init="zero", activation="relu", scale=0.1),
    # Houlsby et al. 2019: after attention and after the MLP, near-identity init.
    "houlsby": dict(placement="attn+mlp", adapter_scaling="fixed", init="houlsby", activation="gelu", scale=1.0),
    # Pfeiffer et al. 2021: after the MLP only.
    "pfeiffer": dict(placement="mlp", adapter_scaling="fixed", init="houlsby", activation="relu", scale=1.0),
}


def _opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # -- what is trained ---------------------------------------------------------------------
    dataset: str = _opt("cifar100", "torchvision name, folder:PATH, synthetic or planted")
    data_root: str = _opt("data", "where datasets are downloaded to / read from")
    backbone: str = _opt("vit_small_patch16_224", "timm ViT name (vit_*, deit_*) or a tiny test ViT")
    weights: str = _opt("hub", "'hub' (timm pretrained), 'none' (random init) or a checkpoint PATH")
    method: str = _opt("adapter", "adapter | head (linear probe) | full (full fine-tuning) | lora | bitfit "
                       "(biases + head) | vpt (prompt tokens)", choices=METHODS)
    # -- the adapter: x <- block(x); x <- x + scale * W_up act(W_down x) ------------------------
    rank: int = _opt(16, "the capacity axis: adapter bottleneck width r, LoRA rank, VPT prompt tokens")
    placement: str = _opt("block", "after the block | after attn | after the mlp | parallel to the mlp | "
                          "attn+mlp (both)", choices=PLACEMENTS)
    blocks: str = _opt("all", "which blocks get adapters: all | every:K | last:K")
    init: str = _opt("zero", "zero W_up | small W_up ~ N(0, 1e-4) | random (both factors random) | houlsby "
                     "(both ~ N(0, 0.01), truncated)", choices=INITS)
    activation: str = _opt("gelu", "bottleneck nonlinearity", choices=ACTIVATIONS)
    scale: float = _opt(1.0, "adapter output scale (the initial value when --adapter-scaling learns it)")
    adapter_scaling: str = _opt("fixed", "the output scale: fixed | scalar (learned) | channel (learned per "
                                "channel, Adapter+)", choices=SCALINGS)
    # -- the other families (peft_methods.py); their capacity axis is --rank ---------------------
    lora_targets: str = _opt("q,v", "LoRA targets in each block: q,k,v (thirds of the fused qkv) and/or "
                             "qkv,proj,fc1,fc2 (whole Linears, through PEFT)")
    lora_alpha: float = _opt(8.0, "LoRA's alpha: the update is (alpha / rank) B A (PEFT's default alpha 8)")
    vpt_mode: str = _opt("shallow", "VPT prompts: shallow (input only) | deep (new prompts at every block)",
                         choices=VPT_MODES)
    # -- optimisation: AdamW, cosine per step with linear warmup -------------------------------
    seed: int = _opt(0, "seed of the run (init, val split, batch order, augmentation)")
    epochs: int = _opt(50, "training epochs")
    batch_size: int = _opt(1024, "batch size")
    lr: float = _opt(5e-4, "learning rate at batch 1024; scaled linearly with --batch-size")
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on biases, norms, embeddings)")
    warmup_epochs: float = _opt(5.0, "linear warmup before the cosine decay")
    clip_grad: float = _opt(1.0, "gradient-norm clipping (0 disables)")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing")
    layer_decay: float = _opt(1.0, "layer-wise lr decay (timm's param_groups_layer_decay; 1 disables), "
                              "e.g. 0.65-0.75 for full fine-tuning")
    # -- data ----------------------------------------------------------------------------------
    image_size: int = _opt(0, "input resolution (0: the backbone's own, 224 for the reference ViTs)")
    augment: bool = _opt(True, "RandomResizedCrop + flip while training (eval: resize/center crop)")
    val_fraction: float = _opt(0.1, "share of the training set held out for validation, split by --seed")
    shots: int = _opt(0, "few-shot: train on K images per class drawn by --seed from what validation leaves "
                         "(0: the whole training split)")
    feature_samples: int = _opt(1024, "test images whose frozen/adapted features are saved (same for every run)")
    block_features: bool = _opt(False, "also save per-block features")
    skip_corrupt: bool = _opt(False, "leave unreadable image files out (counted in config.json) instead of stopping")
    # -- synthetic / planted tasks (offline) -----------------------------------------------------
    num_classes: int = _opt(10, "classes of the synthetic / planted task")
    train_samples: int = _opt(5000, "training images of the synthetic / planted task")
    test_samples: int = _opt(2000, "test images of the synthetic / planted task")
    planted_rank: int = _opt(4, "rank k* of the teacher's planted adapters")
    planted_strength: float = _opt(1.0, "size of the teacher's planted shift (0: teacher == backbone)")
    # -- execution -------------------------------------------------------------------------------
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16", choices=PRECISIONS)
    compile: bool = _opt(False, "torch.compile the model")
    cache_features: bool = _opt(True, "head-only without augmentation trains on backbone features computed once")
    workers: int = _opt(4, "workers decoding image files into the uint8 cache")
    log_every: int = _opt(50, "steps between progress lines")
    quiet: bool = _opt(False, "no progress bars (there are none either when stdout is not a terminal)")

    # ------------------------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Every field's type, choice and range, model-independent (preflight.py checks the rest
        against the backbone, the device and the file system). Raises UserError naming the flag."""
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), _KINDS.get(f.type)
            if kind is None:  # an annotation we do not check (Optional, unions)
                continue
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise UserError(f"--{_flag(f.name)} {v!r}: expected {kind.__name__}")
            if kind is float and not math.isfinite(v):
                raise UserError(f"--{_flag(f.name)} {v}: not finite")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                raise UserError(f"--{_flag(f.name)} {v!r}: choose one of {', '.join(choices)}")
            lo, hi = RANGES.get(f.name, (None, None))
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bound = f"in [{lo}, {hi}]" if hi is not None else f"at least {lo}"
                raise UserError(f"--{_flag(f.name)} must be {bound}, got {v}")
        if self.method in METHOD_FIELDS and self.rank < 1:
            raise UserError(f"--rank {self.rank}: {self.method} needs rank (VPT: prompt tokens) >= 1")
        if self.shots < 0:
            raise UserError(f"--shots must be >= 0 (0: all training images), got {self.shots}")
        if not 0 < self.layer_decay <= 1:
            raise UserError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if not 0 < self.lr:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.dataset in ("synthetic", "planted"):
            n_val = max(1, round(self.train_samples * self.val_fraction))
            if n_val >= self.train_samples:
                raise UserError(f"--train-samples {self.train_samples} at --val-fraction {self.val_fraction} "
                                "leaves no training images")
        if self.dataset == "planted" and self.planted_rank < 1:
            raise UserError(f"--planted-rank must be at least 1, got {self.planted_rank}")
        if not self.dataset or self.dataset == "folder:":
            raise UserError("--dataset is empty: name a dataset, folder:PATH, synthetic or planted")
        parse_blocks(self.blocks, depth=None)
        if self.method == "lora":
            lora_targets(self.lora_targets)
        return self

    @property
    def run_id(self) -> str:
        """`{dataset}-{backbone}-{method}[-r{rank}][-options]-{config_key}-s{seed}`.

        The readable part names what a sweep varies (plus the adapter options that differ from the
        defaults); `config_key()` covers every other result-changing field, so two configurations
        never share a directory, and the seeds of one configuration differ only in `-s{seed}`.
        """
        dataset = self.dataset.replace("folder:", "").rstrip("/").split("/")[-1].replace(":", "-")
        parts = [dataset, self.backbone, self.method]
        if self.method == "adapter":
            parts.append(f"r{self.rank}")
            default = Config()
            for name in ("placement", "blocks", "init", "activation"):
                if getattr(self, name) != getattr(default, name):
                    parts.append(getattr(self, name).replace(":", ""))
            if self.scale != default.scale:
                parts.append(f"x{self.scale:g}")
        elif self.method in METHOD_FIELDS:  # lora, vpt: the capacity axis, then what is not the default
            parts.append(f"r{self.rank}")
            default = Config()
            for name in METHOD_FIELDS[self.method][1:]:
                value = getattr(self, name)
                if value != getattr(default, name):
                    parts.append(f"a{value:g}" if name == "lora_alpha" else str(value).replace(":", "").replace(",", ""))
        if self.method == "adapter" and self.adapter_scaling != "fixed":
            parts.append(self.adapter_scaling)
        if self.shots:
            parts.append(f"{self.shots}shot")
        if self.layer_decay != 1.0:
            parts.append(f"ld{self.layer_decay:g}")
        parts += [self.config_key(), f"s{self.seed}"]
        return "-".join(parts)

    def identity(self) -> dict:
        """Every field that changes the result, with its value: what makes two runs the same run.

        Leaves out EXECUTION options, the adapter's options for other methods and the synthetic
        task's options for other datasets (a head run at --rank 8 is the head run at --rank 16).
        """
        skip = set(EXECUTION)
        skip.update(f for fields in METHOD_FIELDS.values() for f in fields)
        skip.difference_update(METHOD_FIELDS.get(self.method, ()))
        if self.dataset not in ("synthetic", "planted"):
            skip.update(SYNTHETIC_ONLY)
        if self.dataset != "planted":
            skip.update(PLANTED_ONLY)
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def config_key(self) -> str:
        """A short digest of `identity()` without the seed: equal for exactly the runs that are seeds
        of one configuration. Analyses group and pair runs by it."""
        ident = {k: v for k, v in self.identity().items() if k != "seed"}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_blocks(spec: str, depth: int | None) -> list[int] | None:
    """Block indices for `all`, `every:K` (blocks K-1, 2K-1, ...: the last of every K) or `last:K`."""
    kind, _, k = spec.partition(":")
    if kind == "all" and not k:
        return None if depth is None else list(range(depth))
    if kind in ("every", "last") and k.isdigit() and int(k) >= 1:
        if depth is None:
            return None
        k = int(k)
        return [i for i in range(depth) if i % k == k - 1] if kind == "every" else list(range(max(0, depth - k), depth))
    raise UserError(f"--blocks {spec!r}: expected all, every:K or last:K with K >= 1")


LORA_SPLIT = ("q", "k", "v")                      # thirds of timm's fused qkv (our own wrapper)
LORA_LINEARS = ("qkv", "proj", "fc1", "fc2")      # whole nn.Linear of each block (PEFT)


def lora_targets(spec: str) -> list[str]:
    """The targets of a --lora-targets spec ("q,v", "qkv,fc1", ...); UserError for unknown or clashing ones."""
    targets = list(dict.fromkeys(t for t in spec.replace(" ", "").split(",") if t))
    bad = [t for t in targets if t not in LORA_SPLIT + LORA_LINEARS]
    if bad or not targets:
        raise UserError(f"--lora-targets {spec!r}: choose from {', '.join(LORA_SPLIT + LORA_LINEARS)} (comma-separated)")
    if "qkv" in targets and set(targets) & set(LORA_SPLIT):
        raise UserError(f"--lora-targets {spec!r}: qkv (the whole fused matrix) and q/k/v (its thirds) overlap; "
                        "choose one")
    return targets


def _flag(name: str) -> str:
    return name.replace("_", "-")
