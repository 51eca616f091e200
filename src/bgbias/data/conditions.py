"""Background-swap test images, after Xiao et al., "Noise or Signal: The Role of Image
Backgrounds in Object Recognition" (ICLR 2021, ImageNet-9), with rembg masks in place of
its bounding boxes:

- `only_fg`: the object on black (`image * mask`);
- `only_bg`: the object removed, its region filled from the surroundings (biharmonic
  inpainting of the dilated mask region, scikit-image);
- `mixed_same` / `mixed_rand`: the object composited (`image * mask + bg * (1 - mask)`)
  onto the `only_bg` image of another test image of the same / of another class.

The object-removed backgrounds are computed once per test image at evaluation resolution
(after the eval transform) and written as PNGs, so every model, condition and draw reuses
them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.masks.compute import mask_path_for
from bgbias.core.errors import BgbiasError
from bgbias.core.files import save_image

# A soft rembg mask's edge pixels still carry the object's colour: the removed region is the
# mask above 0.5 grown by this many pixels, so no halo of the object is left to fill from.
GROW_PIXELS = 2


def object_region(mask: np.ndarray, threshold: float = 0.5, grow: int = GROW_PIXELS) -> np.ndarray:
    """bool [H, W]: the mask (float [H, W] in [0, 1]) above `threshold`, dilated by `grow` pixels."""
    from scipy.ndimage import binary_dilation

    region = mask > threshold
    return binary_dilation(region, iterations=grow) if grow and region.any() else region


def remove_object(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] with the object region inpainted from its surroundings.
    An image whose mask covers everything has no surroundings: it becomes mid-grey."""
    from skimage.restoration import inpaint_biharmonic

    region = object_region(mask)
    if not region.any():
        return image.copy()
    if region.all():
        return np.full_like(image, 128)
    filled = inpaint_biharmonic(image.astype(np.float64) / 255.0, region, channel_axis=-1)
    return np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8)


def write_object_removed(test_set: MaskedImageDataset, out_dir: Path) -> None:
    """`out_dir/<image path>.png`: each test image with its object removed, at the size the
    eval transform gives it."""
    for i, sample in enumerate(test_set.samples):
        x = test_set[i][0]  # uint8 [4, H, W]
        image = x[:3].permute(1, 2, 0).numpy()
        mask = x[3].numpy().astype(np.float32) / 255.0
        path = mask_path_for(sample.path, out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(path, Image.fromarray(remove_object(image, mask)))


def partners(labels: np.ndarray, same_class: bool, rng: np.random.Generator) -> np.ndarray:
    """For each image i, another image j != i: of the same class (`same_class`) or of
    another class, uniformly among those."""
    labels = np.asarray(labels)
    chosen = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        pool = np.flatnonzero((labels == label) if same_class else (labels != label))
        pool = pool[pool != i]
        if not len(pool):
            kind = "another image of its class" if same_class else "an image of another class"
            raise BgbiasError(f"test image {i} has no partner for mixed_{'same' if same_class else 'rand'}: "
                              f"it needs {kind}")
        chosen[i] = pool[rng.integers(len(pool))]
    return chosen


class SwapDataset(Dataset):
    """The test items with the object-removed background of a partner image (its own when
    `partner` is None) stacked on: uint8 [7, H, W] = RGB, mask, background RGB."""

    def __init__(self, test_set: MaskedImageDataset, removed_dir: Path, partner: np.ndarray | None = None):
        self.test_set, self.removed_dir, self.partner = test_set, Path(removed_dir), partner

    def __len__(self) -> int:
        return len(self.test_set)

    def background(self, i: int) -> torch.Tensor:
        path = mask_path_for(self.test_set.samples[i].path, self.removed_dir)
        if not path.is_file():
            raise BgbiasError(f"object-removed background not found: {path}")
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x, label, index = self.test_set[i]
        j = i if self.partner is None else int(self.partner[i])
        return torch.cat([x, self.background(j)]), label, index


def only_fg(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W], masks [B, 1, H, W] in [0, 1] -> the object on black."""
    return images * masks
