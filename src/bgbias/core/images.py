"""Decoding any image file into the RGB the rest of the pipeline expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB in display orientation from any mode: grayscale, palette, CMYK, 16-bit, RGBA.

    EXIF orientation is applied first so masks line up with what a viewer shows.
    Transparent pixels become white, as product photos with alpha are shot on white.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float grayscale: scale to 8 bits instead of clipping.
        arr = np.asarray(image, dtype=np.float64)
        span = float(arr.max() - arr.min()) or 1.0
        image = Image.fromarray(((arr - arr.min()) * (255.0 / span)).astype("uint8"), mode="L")
    return image.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode `path` as RGB (raises OSError/ValueError on a corrupt file)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)
