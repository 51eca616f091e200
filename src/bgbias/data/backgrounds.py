"""Background pools: `train` (BGAugment draws from it) and `test` (replaced-background
evaluation), never sharing a photo.

Sources: a directory with one sub-folder per pool (e.g. the paper's Unsplash photos in
`val/` and `test/`), or `bundled`: object-free photos shipped with scikit-image plus
seeded procedural textures. Photos are EXIF-rotated, converted to RGB and shrunk to
`max_side`, so later stages read small files.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bgbias.core.config import BackgroundsConfig
from bgbias.core.images import is_image_file, load_rgb
from bgbias.data.textures import procedural_texture
from bgbias.core.errors import BgbiasError
from bgbias.core.files import save_image, write_json

log = logging.getLogger(__name__)

POOLS = ("train", "test")
# scikit-image sample photos without a foreground object (textures, sky, a surface).
BUNDLED_PHOTOS = {"train": ("brick.png", "grass.png", "moon.png"), "test": ("gravel.png", "hubble_deep_field.jpg")}
TEXTURE_SIDE = 256


def bundled_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _sources(cfg: BackgroundsConfig, base: Path) -> dict[str, list[Path]]:
    if cfg.source == "bundled":
        directory = bundled_dir()
        return {pool: [directory / name for name in BUNDLED_PHOTOS[pool]] for pool in POOLS}
    root = Path(cfg.source)
    root = root if root.is_absolute() else (base / root)
    sources = {}
    for pool, sub in (("train", cfg.train_subdir), ("test", cfg.test_subdir)):
        folder = root / sub
        if not folder.is_dir():
            raise BgbiasError(f"backgrounds.source: folder for the {pool} pool not found: {folder}")
        sources[pool] = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        if not sources[pool]:
            raise BgbiasError(f"backgrounds.source: no images in {folder}")
    return sources


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def build_pools(cfg: BackgroundsConfig, out_dir: Path, seed: int, base: Path = Path(".")) -> dict:
    """Write `out_dir/{train,test}/NNNN.jpg` and `out_dir/manifest.json`; returns the manifest."""
    sources = _sources(cfg, base)
    digests = {pool: {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths} for pool, paths in sources.items()}
    shared = set(digests["train"]) & set(digests["test"])
    if shared:
        raise BgbiasError(f"backgrounds: the same photo is in both pools: {digests['test'][shared.pop()]}")

    manifest: dict = {"source": cfg.source, "pools": {}, "skipped": []}
    for pool_index, pool in enumerate(POOLS):
        entries = []
        for path in tqdm(sources[pool], desc=f"{pool} backgrounds", disable=len(sources[pool]) < 20):
            try:
                image = _shrink(load_rgb(path), cfg.max_side)
            except Exception as exc:  # a corrupt photo is skipped and listed, never silently used
                log.warning("skipping background %s (%s)", path, exc)
                manifest["skipped"].append({"path": str(path), "error": f"{type(exc).__name__}: {exc}"})
                continue
            name = f"{len(entries):04d}.jpg"
            save_image(Path(out_dir) / pool / name, image)
            entries.append({"file": name, "source": path.name})
        if cfg.source == "bundled":
            for i in range(cfg.procedural_per_pool):
                rng = np.random.default_rng([seed, 10 + pool_index, i])
                texture = Image.fromarray(procedural_texture(rng, TEXTURE_SIDE, TEXTURE_SIDE))
                name = f"{len(entries):04d}.jpg"
                save_image(Path(out_dir) / pool / name, texture)
                entries.append({"file": name, "source": f"procedural:{seed}:{pool}:{i}"})
        if not entries:
            raise BgbiasError(f"backgrounds: the {pool} pool is empty (every photo failed to decode)")
        manifest["pools"][pool] = entries
    write_json(Path(out_dir) / "manifest.json", manifest)
    return manifest
