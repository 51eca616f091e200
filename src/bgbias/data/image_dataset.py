"""Torch dataset over an index split: each item is the image with its foreground mask
stacked as a 4th channel (uint8 [4, H, W]), the train-class label and its position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from bgbias.data.datasets import Sample
from bgbias.core.images import load_rgb
from bgbias.masks.compute import mask_path_for
from bgbias.core.errors import BgbiasError


class MaskedImageDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], root: Path, masks_dir: Path,
                 transform: Callable | None = None):
        self.samples = list(samples)
        self.root = Path(root)
        self.masks_dir = Path(masks_dir)
        self.transform = transform
        classes = sorted({s.class_id for s in self.samples})
        self.label_of_class = {c: i for i, c in enumerate(classes)}  # dense 0..C-1
        self.labels = np.array([self.label_of_class[s.class_id] for s in self.samples], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.label_of_class)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> torch.Tensor:
        sample = self.samples[i]
        image = load_rgb(self.root / sample.path)
        mask_file = mask_path_for(sample.path, self.masks_dir)
        if not mask_file.is_file():
            raise BgbiasError(f"mask not found: {mask_file} (run `dvc repro masks`)")
        with Image.open(mask_file) as mask:
            mask = mask.convert("L")
        if mask.size != image.size:
            raise BgbiasError(f"mask {mask_file} is {mask.size}, its image {sample.path} is {image.size}")
        rgba = torch.cat([F.pil_to_tensor(image), F.pil_to_tensor(mask)])  # uint8 [4, H, W]
        return tv_tensors.Image(rgba)  # an Image tv_tensor: transforms treat all 4 channels alike

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = self.load(i)
        if self.transform is not None:
            x = self.transform(x)
        return x.as_subclass(torch.Tensor), int(self.labels[i]), i
