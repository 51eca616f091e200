"""The embedded default dataset: procedurally rendered product-like photos.

A class is an object identity: shape x two colours x surface pattern. Each image varies
pose (rotation), scale, position and lighting. Each class has a "home" background that
its images use with probability `bg_correlation`; the others get a fresh random
background. That correlation is what makes background bias learnable, as in SOP where
a listing's photos share a background. Train, val and test classes are disjoint.

Objects are rendered at 2x and box-filtered down, so the ground-truth mask is the exact
pixel coverage (0..255) and every image is `object * mask + background * (1 - mask)`
up to that filter. Every image is drawn from its own seeded generator: the output is
identical for a given seed, whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import functools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bgbias.core.config import SyntheticConfig
from bgbias.data.textures import procedural_texture
from bgbias.core.files import save_image, write_text

SHAPES = ("circle", "triangle", "square", "pentagon", "hexagon", "star", "cross", "ellipse", "diamond")
PATTERNS = ("solid", "stripes", "checker", "dots", "rings")
SUPERSAMPLE = 2
HOME_BG_SCALE = 1.5  # home textures are larger than the image; each image takes a random crop


@dataclass(frozen=True)
class ClassSpec:
    index: int  # 0-based over all classes
    split: str
    shape: str
    pattern: str
    color: tuple[float, float, float]
    accent: tuple[float, float, float]
    pattern_freq: float

    @property
    def name(self) -> str:
        return f"{self.index + 1:03d}_{self.shape}_{self.pattern}"


def _hsv_color(rng: np.random.Generator, hue: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return (r * 255, g * 255, b * 255)


def class_specs(cfg: SyntheticConfig, seed: int) -> list[ClassSpec]:
    splits = ["train"] * cfg.classes.train + ["val"] * cfg.classes.val + ["test"] * cfg.classes.test
    specs = []
    for index, split in enumerate(splits):
        rng = np.random.default_rng([seed, 1, index])
        hue = rng.random()
        specs.append(
            ClassSpec(
                index=index,
                split=split,
                # Cycling shapes/patterns by index keeps classes distinct; colours add the rest.
                shape=SHAPES[index % len(SHAPES)],
                pattern=PATTERNS[(index // len(SHAPES)) % len(PATTERNS)],
                color=_hsv_color(rng, hue),
                accent=_hsv_color(rng, hue + rng.uniform(0.25, 0.75)),
                pattern_freq=float(rng.uniform(2.5, 4.5)),
            )
        )
    return specs


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of points (u, v) of the object frame ([-1, 1]^2) inside the shape."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)

    def polygon(n: int) -> np.ndarray:
        sector = np.mod(theta + np.pi / 2, 2 * np.pi / n) - np.pi / n
        return r * np.cos(sector) <= np.cos(np.pi / n)

    if shape == "circle":
        return r <= 1.0
    if shape == "ellipse":
        return u**2 + (v / 0.55) ** 2 <= 1.0
    if shape == "triangle":
        return polygon(3)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "pentagon":
        return polygon(5)
    if shape == "hexagon":
        return polygon(6)
    if shape == "diamond":
        return np.abs(u) / 0.7 + np.abs(v) <= 1.0
    if shape == "star":
        radius = 0.6 + 0.4 * np.cos(5 * (theta + np.pi / 2))
        return r <= radius
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


@functools.cache
def _shape_area(shape: str) -> float:
    """Area of the shape in object-frame units (the [-1, 1]^2 square has area 4)."""
    g = np.linspace(-1, 1, 401)
    u, v = np.meshgrid(g, g)
    return float(shape_inside(shape, u, v).mean() * 4.0)


def _pattern_weight(spec: ClassSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Share of the accent colour (0..1) at each object-frame point."""
    f = spec.pattern_freq * np.pi
    if spec.pattern == "solid":
        return np.zeros_like(u)
    if spec.pattern == "stripes":
        return (np.sin(f * u) > 0).astype(np.float32)
    if spec.pattern == "checker":
        return ((np.sin(f * u) * np.sin(f * v)) > 0).astype(np.float32)
    if spec.pattern == "dots":
        cell = 2.0 / spec.pattern_freq
        du = np.mod(u, cell) - cell / 2
        dv = np.mod(v, cell) - cell / 2
        return (np.hypot(du, dv) <= cell * 0.3).astype(np.float32)
    if spec.pattern == "rings":
        return (np.sin(f * np.hypot(u, v)) > 0).astype(np.float32)
    raise ValueError(f"unknown pattern {spec.pattern!r}")


def home_background(spec: ClassSpec, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 2, spec.index])
    side = int(size * HOME_BG_SCALE)
    return procedural_texture(rng, side, side)


def render_image(
    spec: ClassSpec, image_index: int, cfg: SyntheticConfig, seed: int, home: np.ndarray
) -> tuple[Image.Image, Image.Image, bool]:
    """(RGB image, L mask, uses_home_background) for one image of the class."""
    rng = np.random.default_rng([seed, 3, spec.index, image_index])
    size = cfg.image_size
    big = size * SUPERSAMPLE

    uses_home = bool(rng.random() < cfg.bg_correlation)
    if uses_home:
        y0, x0 = rng.integers(0, home.shape[0] - size + 1, size=2)
        background = home[y0 : y0 + size, x0 : x0 + size]
        if rng.random() < 0.5:
            background = background[:, ::-1]
    else:
        background = procedural_texture(rng, size, size)
    background = np.asarray(
        Image.fromarray(np.ascontiguousarray(background)).resize((big, big), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )

    # Pose: area share -> object scale in pixels, then rotation and a position that fits.
    area = rng.uniform(*cfg.object_area)
    scale = big * np.sqrt(area / _shape_area(spec.shape))  # pixels per object-frame unit
    angle = rng.uniform(0, 2 * np.pi)
    margin = min(scale, big / 2)
    cx, cy = rng.uniform(margin, big - margin, size=2)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) + 0.5
    dx, dy = (xx - cx) / scale, (yy - cy) / scale
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)

    inside = shape_inside(spec.shape, u, v).astype(np.float32)  # (2H, 2W)
    accent = _pattern_weight(spec, u, v)[..., None]
    surface = (1 - accent) * np.array(spec.color, np.float32) + accent * np.array(spec.accent, np.float32)
    # Lighting: overall brightness and a linear shading gradient in image space.
    light_dir = rng.uniform(0, 2 * np.pi)
    shading = rng.uniform(0.75, 1.2) + 0.25 * (dx * np.cos(light_dir) + dy * np.sin(light_dir))
    surface = np.clip(surface * shading[..., None], 0, 255)

    composite = surface * inside[..., None] + background * (1 - inside[..., None])
    image = Image.fromarray(np.clip(composite, 0, 255).astype(np.uint8)).reduce(SUPERSAMPLE)
    mask = Image.fromarray((inside * 255).astype(np.uint8)).reduce(SUPERSAMPLE)
    return image, mask, uses_home


def _render_class(args: tuple[ClassSpec, SyntheticConfig, int, Path]) -> list[tuple[str, str, str, bool]]:
    spec, cfg, seed, out_dir = args
    home = home_background(spec, cfg.image_size, seed)
    rows = []
    for i in range(cfg.images_per_class):
        image, mask, uses_home = render_image(spec, i, cfg, seed, home)
        rel = f"{spec.name}/{i:03d}.png"
        save_image(out_dir / "images" / rel, image)
        save_image(out_dir / "masks" / rel, mask)
        rows.append((rel, spec.name, spec.split, uses_home))
    return rows


def generate(cfg: SyntheticConfig, seed: int, out_dir: Path) -> dict:
    """Render the dataset into `out_dir/images` (+ labels.csv) and `out_dir/masks`."""
    specs = class_specs(cfg, seed)
    jobs = [(spec, cfg, seed, Path(out_dir)) for spec in specs]
    desc = "rendering synthetic classes"
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            per_class = list(tqdm(pool.map(_render_class, jobs), total=len(jobs), desc=desc))
    else:
        per_class = [_render_class(job) for job in tqdm(jobs, desc=desc)]
    rows = [row for rows in per_class for row in rows]
    lines = ["path,label,split,home_background"] + [f"{p},{c},{s},{int(h)}" for p, c, s, h in rows]
    write_text(Path(out_dir) / "images" / "labels.csv", "\n".join(lines) + "\n")
    return {
        "images": len(rows),
        "classes": len(specs),
        "home_background_share": float(np.mean([h for *_, h in rows])),
    }
