"""Checks of a whole sweep before any run starts: a bad input is a UserError here, never a
"failed" or "diverged" run record later.

`Config.validate` checks each field alone; this module checks what needs the outside world:
the device, the backbone's shape (rank and image size against the model, built on the meta
device: no memory, no weights), the files and folders named, the output folder, and runs already
in it that were recorded with another identity.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import runs
from .config import Config
from .errors import UserError


def check_sweep(configs: list[Config], out: Path) -> None:
    """Raise UserError for the first thing that would stop one of `configs` in `out`."""
    check_out(Path(out))
    seen = set()
    for config in configs:
        config.validate()
        key = (config.device, config.backbone, config.image_size, config.rank, config.blocks, config.method,
               config.weights, config.dataset, config.data_root, config.planted_rank)
        if key not in seen:
            seen.add(key)
            check_device(config.device)
            check_paths(config)
            check_model(config)
        runs.check_identity(Path(out) / config.run_id, config)


def check_out(out: Path) -> None:
    """`out` is (or can become) a folder we can write in."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {out}: {parent} is a file, not a folder")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def check_device(name: str) -> None:
    from .train import resolve_device

    resolve_device(name)  # raises UserError for a malformed or missing device


def check_paths(config: Config) -> None:
    from . import data

    name = config.dataset
    if name not in ("synthetic", "planted", *data.TORCHVISION) and ":" not in name:
        data.load(config, 0)  # an unknown or local-only name: raises its UserError before loading anything
    if config.dataset.startswith("folder:"):
        path = Path(config.dataset[len("folder:"):])
        if not (path / "train").is_dir() or not any((path / s).is_dir() for s in ("test", "val")):
            raise UserError(f"--dataset {config.dataset}: expected {path}/train/<class>/... and "
                            f"{path}/test (or val)/<class>/...")
    root = Path(config.data_root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-root {root}: a file, not a folder")
    if config.weights not in ("hub", "none"):
        path = Path(config.weights)
        if not path.is_file():
            raise UserError(f"--weights {config.weights}: no such file (use hub, none or a checkpoint path)")


def check_model(config: Config) -> None:
    """Rank, image size and the adapter options (adapters.check_adapters) against the backbone."""
    import torch

    from .adapters import check_adapters
    from .backbones import create_backbone

    with torch.device("meta"):
        model = create_backbone(config.backbone, "none", num_classes=2)
    width = model.embed_dim
    patch = model.patch_embed.patch_size[0]
    if config.image_size and (config.image_size < patch or config.image_size % patch):
        raise UserError(f"--image-size {config.image_size}: {config.backbone} needs a multiple of its patch "
                        f"size {patch}")
    if config.method == "adapter":
        if config.rank > width:
            raise UserError(f"--rank {config.rank}: larger than {config.backbone}'s width {width}")
        check_adapters(model, config.rank, config.placement, config.blocks, config.scale)
    if config.dataset == "planted" and config.planted_rank > width:
        raise UserError(f"--planted-rank {config.planted_rank}: larger than {config.backbone}'s width {width}")
