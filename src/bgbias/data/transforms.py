"""Joint image + mask transforms. The mask rides along as a 4th channel of one uint8
tensor, so every random crop, resize and flip moves image and mask identically (same
box, same interpolation: a soft rembg mask stays soft)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from bgbias.core.config import TrainConfig


def train_transform(cfg: TrainConfig) -> v2.Transform:
    # The paper: RandomResizedCrop 227, scale (0.16, 1), ratio (0.75, 1.33), horizontal flip.
    return v2.Compose([
        v2.RandomResizedCrop(cfg.crop, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(),
    ])


def eval_transform(cfg: TrainConfig) -> v2.Transform:
    # The paper: resize (shorter side) 256, centre crop 227.
    return v2.Compose([v2.Resize(cfg.resize, antialias=True), v2.CenterCrop(cfg.crop)])


def split_batch(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, 4, H, W] -> RGB float [B, 3, H, W] and mask float [B, 1, H, W], both in [0, 1]."""
    batch = batch.float().div_(255.0)
    return batch[:, :3], batch[:, 3:]
