"""Training throughput, MFU and peak memory of adaptertune's trainer vs a plain reference loop.

    python benchmarks/throughput.py --backbone vit_base_patch16_224 --batch-size 256 --steps 30   # on a GPU
    python benchmarks/throughput.py --smoke                                                     # CPU, seconds

For each method (adapter, head, full) it times steps of the real `Trainer` (uint8 data on the device,
batched augmentation, bf16 on GPU, fused AdamW, no host sync in the loop), then the same adapter
model in a plain loop (fp32, PIL + torchvision transforms in DataLoader workers, `.item()` every
step), and prints images/s, MFU (with --peak-tflops) and peak GPU memory, with the ratios. Head-only
is timed twice: on cached features (no augmentation) and through the backbone every epoch.
Images are synthetic 32x32 uint8 upsampled to the model's input size, as CIFAR would be.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from adaptertune import data
from adaptertune.config import Config
from adaptertune.train import Trainer, lr_schedule


def forward_flops(model, size: int) -> float:
    """FLOPs of one forward pass of a ViT on one image (matmuls only: 2 per multiply-add)."""
    d, depth = model.embed_dim, len(model.blocks)
    p = model.patch_embed.patch_size[0]
    tokens = (size // p) ** 2 + model.num_prefix_tokens
    mlp = next(m.out_features for n, m in model.named_modules() if n.endswith("mlp.fc1"))
    per_block = 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d
    return depth * per_block + 2 * (size // p) ** 2 * 3 * p * p * d


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_trainer(config: Config, steps: int) -> dict:
    """Images/s of `Trainer.train_epoch` over `steps` batches, after one warm-up epoch."""
    t = Trainer(config, log=lambda *_: None)
    idx = np.arange(len(t.train_all))
    total = 2 * steps
    t.train_epoch(idx[: config.batch_size * 2], 0, 0, total, 1)  # warm-up (and compilation)
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(t.device)
    start = time.perf_counter()
    t.train_epoch(idx, 1, 0, total, 1)
    sync(t.device)
    seconds = time.perf_counter() - start
    mem = torch.cuda.max_memory_allocated() / 2**30 if t.device.type == "cuda" else None
    return {"images_per_s": len(idx) / seconds, "peak_gib": mem, "trainer": t}


class PILImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].permute(1, 2, 0).numpy())), int(self.labels[i])


def time_reference(t: Trainer, steps: int, batch_size: int, workers: int) -> float:
    """The plain loop: fp32, per-image PIL transforms in workers, a host sync every step."""
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(t.size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(t.mean, t.std)])
    ds = PILImages(t.train_images.images.cpu(), t.train_images.labels, tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    model, opt = t.model.float(), torch.optim.AdamW([p for p in t.model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up
            sync(t.device)
            start, seen = time.perf_counter(), 0
        x, y = x.to(t.device), y.to(t.device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the per-step sync typical research code does for logging
        seen += len(y)
        if i == steps:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_base_patch16_224")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the reference loop")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU (H100 bf16 dense: 989)")
    p.add_argument("--smoke", action="store_true", help="tiny ViT, few steps: checks the script runs (CPU)")
    args = p.parse_args()
    if args.smoke:
        args.backbone, args.batch_size, args.steps, args.workers = "vit_nano", 32, 3, 0

    base = Config(dataset="synthetic", backbone=args.backbone, weights="none", batch_size=args.batch_size,
                  train_samples=args.batch_size * args.steps, test_samples=args.batch_size, epochs=2,
                  precision=args.precision, compile=args.compile, log_every=0, feature_samples=1)
    rows = []
    for label, overrides in [("adapter r16", dict(method="adapter")), ("full", dict(method="full")),
                             ("head (backbone each step)", dict(method="head", augment=False, cache_features=False)),
                             ("head (cached features)", dict(method="head", augment=False))]:
        r = time_trainer(dataclasses.replace(base, **overrides), args.steps)
        t = r.pop("trainer")
        factor = {"adapter": 2, "full": 3, "head": 1}[t.config.method]  # frozen weights: no weight gradients
        flops = 0.0 if t.cached else factor * forward_flops(t.model, t.size)
        r["tflops"] = flops * r["images_per_s"] / 1e12
        rows.append((label, r))
        if label == "adapter r16":
            ref = time_reference(t, args.steps, args.batch_size, args.workers)
            rows.append(("reference loop (adapter, fp32, PIL)", {"images_per_s": ref, "peak_gib": None,
                                                                  "tflops": flops * ref / 1e12}))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"# {args.backbone}, batch {args.batch_size}, {args.steps} steps, precision {args.precision}, "
          f"compile {args.compile}, on {device}, torch {torch.__version__}")
    print(f"{'method':38s} {'images/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>9s}")
    for label, r in rows:
        mfu = f"{100 * r['tflops'] / args.peak_tflops:5.1f}%" if args.peak_tflops and r["tflops"] else "   n/a"
        mem = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else "      n/a"
        print(f"{label:38s} {r['images_per_s']:10.1f} {r['tflops']:8.2f} {mfu} {mem}")
    by = dict(rows)
    print(f"adapter / reference loop: {by['adapter r16']['images_per_s'] / by['reference loop (adapter, fp32, PIL)']['images_per_s']:.2f}x")
    print(f"head cached / head through backbone: "
          f"{by['head (cached features)']['images_per_s'] / by['head (backbone each step)']['images_per_s']:.1f}x "
          "(per epoch, after the one-time feature pass)")


if __name__ == "__main__":
    main()
