"""Procedural background textures: smooth multi-colour fields with optional stripes.

Used for the synthetic dataset's backgrounds and to top up the bundled background pools.
They contain no object-like shapes, so they never compete with a foreground.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def procedural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An RGB uint8 array (height, width, 3) drawn from `rng`."""
    palette = np.stack([random_color(rng) for _ in range(3)])  # (3, 3): colours x RGB
    grid = int(rng.integers(2, 9))
    # Low-resolution weights, upsampled smoothly: large soft colour regions.
    weights = np.stack(
        [
            np.asarray(
                Image.fromarray(rng.uniform(0, 255, size=(grid, grid)).astype(np.uint8)).resize(
                    (width, height), Image.Resampling.BICUBIC
                ),
                dtype=np.float32,
            )
            for _ in range(3)
        ],
        axis=-1,
    )  # (H, W, 3)
    weights = weights**2 + 1.0
    weights /= weights.sum(axis=-1, keepdims=True)
    image = weights @ palette.astype(np.float32)  # (H, W, 3)

    if rng.random() < 0.4:  # soft stripes at a random angle
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.08, 0.4) * max(height, width)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        image *= (1.0 + 0.18 * np.sin(phase))[..., None]

    image += rng.normal(0, 4.0, size=image.shape)  # sensor-like grain
    return np.clip(image, 0, 255).astype(np.uint8)
