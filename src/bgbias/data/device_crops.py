"""RandomResizedCrop + horizontal flip of a whole batch in one `grid_sample`, on the device.

For the decode-free input (data/prepared.py): the loader hands over the batch's stored
images padded to one size, with each image's size; crop boxes are drawn as torchvision's
`RandomResizedCrop.get_params` draws them (10 tries of area share and log-uniform aspect
ratio, then the centre crop), vectorised over the batch, from an explicit generator.

Each output pixel samples its box bilinearly with half-pixel centres and edge clamping,
which is what `resize` of the cropped box does (align_corners=False), so a box that is
upscaled gives torchvision's pixels up to float rounding. A box larger than the crop is
sampled without antialiasing (torchvision antialiases): with images stored at the shorter
side `train.resize`, such boxes shrink by at most long side / crop (1.5x at 256 / 227 for
a 4:3 photo).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ATTEMPTS = 10  # torchvision's


def crop_boxes(sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator) -> torch.Tensor:
    """long [B, 2] (H, W) -> long [B, 4] boxes (top, left, height, width)."""
    n = len(sizes)
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, ATTEMPTS, generator=generator,
                                                                           dtype=torch.float64))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, ATTEMPTS, generator=generator,
                                                                      dtype=torch.float64))
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.double().argmax(1), -1)
    pick = first.clamp(min=0)[:, None]
    h, w = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0]
    # No try fits: the centre crop at the nearest allowed aspect ratio.
    in_ratio = width[:, 0] / height[:, 0]
    fw = torch.where(in_ratio > ratio[1], torch.round(height[:, 0] * ratio[1]), width[:, 0])
    fh = torch.where(in_ratio < ratio[0], torch.round(width[:, 0] / ratio[0]), height[:, 0])
    fallback = first < 0
    h, w = torch.where(fallback, fh, h), torch.where(fallback, fw, w)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(fallback, torch.div(height[:, 0] - h, 2, rounding_mode="floor"),
                      torch.floor(u[:, 0] * (height[:, 0] - h + 1)))
    left = torch.where(fallback, torch.div(width[:, 0] - w, 2, rounding_mode="floor"),
                       torch.floor(u[:, 1] * (width[:, 0] - w + 1)))
    return torch.stack([top, left, h, w], 1).long()


def _axis(start: torch.Tensor, length: torch.Tensor, out: int, padded: int) -> torch.Tensor:
    """[B, out] sample positions along one axis, in grid_sample's [-1, 1] units of the padded size."""
    u = torch.arange(out, dtype=torch.float64, device=start.device)
    inside = ((u[None] + 0.5) * (length[:, None] / out) - 0.5).clamp(min=0)
    inside = torch.minimum(inside, (length[:, None] - 1).double())
    return ((start[:, None] + inside + 0.5) / padded * 2 - 1).float()


def resized_crops(batch: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """batch [B, C, Hmax, Wmax] (any dtype, on the device), boxes long [B, 4], flips bool [B]
    -> float [B, C, size, size] in the batch's value range."""
    boxes, flips = boxes.to(batch.device), flips.to(batch.device)
    ys = _axis(boxes[:, 0].double(), boxes[:, 2].double(), size, batch.shape[2])  # [B, size]
    xs = _axis(boxes[:, 1].double(), boxes[:, 3].double(), size, batch.shape[3])
    xs = torch.where(flips[:, None], xs.flip(1), xs)
    grid = torch.stack([xs[:, None, :].expand(-1, size, -1), ys[:, :, None].expand(-1, -1, size)], dim=-1)
    return F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crops(padded: torch.Tensor, sizes: torch.Tensor, size: int, scale: tuple[float, float],
                         ratio: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """The training transform for a padded batch: boxes and flips drawn from `generator` (CPU)."""
    boxes = crop_boxes(sizes, scale, ratio, generator)
    flips = torch.rand(len(sizes), generator=generator) < 0.5
    return resized_crops(padded, boxes, flips, size)
