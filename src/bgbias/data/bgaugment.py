"""BGAugment: replace an image's background with a crop of a background photo,
`x = image * mask + background * (1 - mask)`, batched on the training device.

The pool's photos are held on the device as one square tensor per photo; a draw is a
photo index plus a random square crop box per image, rendered for the whole batch with
one `grid_sample`. Draws come from an explicit generator, so the replaced-background
evaluation sets are fixed for a seed (the reference code's draw was unseeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from bgbias.core.images import is_image_file, load_rgb
from bgbias.core.errors import BgbiasError

# A crop covers this share range of the photo's side: large enough to look like a scene,
# small enough that two images rarely get the same background pixels.
CROP_SIDE = (0.4, 1.0)


@dataclass
class BackgroundDraw:
    photo: torch.Tensor  # long [B]: index into the pool
    box: torch.Tensor  # float [B, 3]: crop side share, centre x and y in [-1, 1] grid units

    def to(self, device: torch.device) -> BackgroundDraw:
        return BackgroundDraw(self.photo.to(device), self.box.to(device))

    def select(self, index: torch.Tensor) -> BackgroundDraw:
        return BackgroundDraw(self.photo[index], self.box[index])


class BackgroundPool:
    def __init__(self, photos: torch.Tensor, names: list[str] | None = None):
        self.photos = photos  # float [N, 3, S, S] in [0, 1]
        self.names = names or [str(i) for i in range(len(photos))]

    @classmethod
    def from_folder(cls, folder: Path, side: int, device: torch.device | str = "cpu") -> BackgroundPool:
        files = sorted(p for p in Path(folder).iterdir() if is_image_file(p)) if Path(folder).is_dir() else []
        if not files:
            raise BgbiasError(f"no background photos in {folder} (run `dvc repro backgrounds`)")
        photos = torch.stack([_square(load_rgb(f), side) for f in files]).float().div_(255.0)
        return cls(photos.to(device), [f.name for f in files])

    def __len__(self) -> int:
        return self.photos.shape[0]

    def draw(self, n: int, generator: torch.Generator) -> BackgroundDraw:
        photo = torch.randint(len(self), (n,), generator=generator)
        u = torch.rand(n, 3, generator=generator)
        side = CROP_SIDE[0] + (CROP_SIDE[1] - CROP_SIDE[0]) * u[:, 0]
        # The crop's centre may move by (1 - side) in grid units and stay inside the photo.
        centre = (2 * u[:, 1:] - 1) * (1 - side[:, None])
        return BackgroundDraw(photo, torch.cat([side[:, None], centre], dim=1))

    def render(self, draw: BackgroundDraw, height: int, width: int) -> torch.Tensor:
        """[B, 3, height, width]: each image's crop, resized bilinearly."""
        draw = draw.to(self.photos.device)
        side, cx, cy = draw.box.unbind(1)
        zero = torch.zeros_like(side)
        theta = torch.stack([torch.stack([side, zero, cx], 1), torch.stack([zero, side, cy], 1)], 1)  # [B, 2, 3]
        grid = F.affine_grid(theta, [len(side), 3, height, width], align_corners=False)
        return F.grid_sample(self.photos[draw.photo], grid, mode="bilinear", align_corners=False)


def _square(image: Image.Image, side: int) -> torch.Tensor:
    """Centre square crop resized to side x side, uint8 [3, side, side]."""
    short = min(image.size)
    left, top = (image.width - short) // 2, (image.height - short) // 2
    image = image.crop((left, top, left + short, top + short)).resize((side, side), Image.Resampling.BILINEAR)
    return TF.pil_to_tensor(image)


def composite(images: torch.Tensor, masks: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """images, backgrounds [B, 3, H, W] and masks [B, 1, H, W] in [0, 1] -> [B, 3, H, W]."""
    return images * masks + backgrounds * (1 - masks)


def replace_backgrounds(images: torch.Tensor, masks: torch.Tensor, pool: BackgroundPool, draw: BackgroundDraw,
                        apply: torch.Tensor | None = None) -> torch.Tensor:
    """Composite each image onto its drawn background; `apply` (bool [B]) limits it to some images."""
    backgrounds = pool.render(draw, images.shape[-2], images.shape[-1])
    if apply is not None:
        # Where not applied, the mask is treated as all foreground: the image is unchanged.
        masks = torch.where(apply.view(-1, 1, 1, 1).to(masks.device), masks, torch.ones_like(masks))
    return composite(images, masks, backgrounds)
