"""Evaluation preprocessing from the model's own data config, batched on the device.

`Preprocess` holds what timm's `resolve_data_config` says about a checkpoint: input size, mean/std,
crop_pct, crop mode and interpolation. `Preprocess.eval` applies to a uint8 batch what
`timm.data.create_transform(**data_config)` applies to each image (PIL): resize to
floor(size / crop_pct) (the shorter side for crop mode "center", both sides for "squash") with the
model's interpolation (antialiased, PIL's kernels), round to uint8, centre crop, normalise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .errors import UserError

MODES = {"bilinear", "bicubic"}
CROP_MODES = {"center", "squash"}


def _height_first(h: int, w: int, out_h: int, out_w: int) -> bool:
    """PIL resizes in two passes with uint8 in between: the width first, except (Pillow >= 13) when
    the height shrinks by more than twice as many pixels as the width."""
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13 and 0 < h - out_h and h - out_h > 2 * (w - out_w)


@dataclass(frozen=True)
class Preprocess:
    input_size: int  # square input, pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    crop_mode: str = "center"
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in MODES:
            raise UserError(f"interpolation {self.interpolation!r} of the model's data config is not supported "
                            f"(supported: {', '.join(sorted(MODES))})")
        if self.crop_mode not in CROP_MODES:
            raise UserError(f"crop mode {self.crop_mode!r} of the model's data config is not supported "
                            f"(supported: {', '.join(sorted(CROP_MODES))})")

    @classmethod
    def from_data_config(cls, dc: dict) -> "Preprocess":
        """From timm's `resolve_data_config` / `resolve_model_data_config` output."""
        h, w = dc["input_size"][-2:]
        if h != w:
            raise UserError(f"input size {h}x{w}: only square inputs are supported")
        return cls(h, tuple(dc["mean"]), tuple(dc["std"]), dc.get("crop_pct") or 0.875,
                   dc.get("crop_mode") or "center", dc.get("interpolation") or "bilinear")

    def data_config(self) -> dict:
        """The timm data config (`create_transform(**pre.data_config())` is the reference pipeline)."""
        return {**asdict(self), "input_size": (3, self.input_size, self.input_size)}

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def scale_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)

    def eval(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised (B, 3, size, size), as timm's eval transform per image."""
        h, w = x.shape[-2:]
        s = self.scale_size
        if self.crop_mode == "squash":
            out = (s, s)
        else:  # torchvision Resize(int): the shorter side to s, the longer one in proportion
            out = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        y = x.to(dtype)
        for size in ((out[0], w) if _height_first(h, w, *out) else (h, out[1]), out):  # PIL's two passes
            if size != tuple(y.shape[-2:]):
                y = F.interpolate(y, size=size, mode=self.interpolation, align_corners=False, antialias=True)
                y = y.round().clamp(0, 255)
        top, left = int(round((out[0] - self.input_size) / 2.0)), int(round((out[1] - self.input_size) / 2.0))
        y = y[..., top:top + self.input_size, left:left + self.input_size]
        mean = torch.tensor(self.mean, device=x.device, dtype=dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=dtype).view(1, 3, 1, 1)
        return (y / 255 - mean) / std
