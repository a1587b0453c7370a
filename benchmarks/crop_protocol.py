"""How our training crops compare with torchvision's RandomResizedCrop (prints figures; no GPU needed).

1. Crop boxes on the stored square image: area share and aspect ratio of `random_resized_crop_boxes`
   against torchvision's `RandomResizedCrop.get_params` (means, 90th percentiles, two-sample KS p).
2. What the square cache changes for non-square photos: the cache keeps the central square, so our
   crops are torchvision's crops *of that square*. For a W x H photo this prints the share of the
   photo the square keeps, how often torchvision's crops of the full photo reach outside that square
   and by how much, and the crop area as a share of the full photo under both protocols.

    python benchmarks/crop_protocol.py [--draws 20000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from adaptertune.data import random_resized_crop_boxes


def reference(height: int, width: int, n: int) -> np.ndarray:
    """(n, 4) top, left, h, w of torchvision's sampler."""
    img = torch.empty(3, height, width)
    return np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], float)


def ours(height: int, width: int, n: int, seed: int = 0) -> np.ndarray:
    t = random_resized_crop_boxes(n, height, width, torch.Generator().manual_seed(seed), "cpu", flip=False).double()
    w, h = t[:, 0, 0] * width, t[:, 1, 1] * height
    left, top = (t[:, 0, 2] + 1) * width / 2 - w / 2, (t[:, 1, 2] + 1) * height / 2 - h / 2
    return torch.stack([top, left, h, w], 1).round().numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=20_000)
    n = p.parse_args().draws
    torch.manual_seed(0)

    print(f"1. crop boxes on a 256 x 256 stored image, {n} draws each")
    ref, our = reference(256, 256, n), ours(256, 256, n)
    for what, f in (("area share", lambda b: b[:, 2] * b[:, 3] / 256 ** 2), ("log(w/h)", lambda b: np.log(b[:, 3] / b[:, 2]))):
        a, b = f(ref), f(our)
        print(f"   {what:10s} torchvision mean {a.mean():.3f} p90 {np.quantile(a, 0.9):.3f} | "
              f"ours mean {b.mean():.3f} p90 {np.quantile(b, 0.9):.3f} | KS p = {ks_2samp(a, b).pvalue:.2f}")

    print("2. non-square photos: torchvision's crops of the full photo vs ours of its central square")
    for width, height in ((500, 375), (500, 333), (375, 500)):
        side = min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        full = reference(height, width, n)
        top, left, h, w = full.T
        inside_w = np.clip(np.minimum(left + w, x0 + side) - np.maximum(left, x0), 0, None)
        inside_h = np.clip(np.minimum(top + h, y0 + side) - np.maximum(top, y0), 0, None)
        outside = 1 - inside_w * inside_h / (w * h)
        sq = ours(side, side, n)
        print(f"   {width} x {height}: the square keeps {side ** 2 / (width * height):.0%} of the photo; "
              f"{np.mean(outside > 0):.0%} of torchvision's crops reach outside it "
              f"(mean {outside.mean():.1%} of their pixels, p90 {np.quantile(outside, 0.9):.1%}); "
              f"crop area / photo: torchvision mean {np.mean(w * h) / (width * height):.3f}, "
              f"ours {np.mean(sq[:, 2] * sq[:, 3]) / (width * height):.3f}")


if __name__ == "__main__":
    main()
