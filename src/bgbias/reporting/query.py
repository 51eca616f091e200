"""`bgbias query`: nearest test images of any image under a registered model.

The test split is embedded once per (model version, index content) and cached in
`outputs/query/`; a query image found in the index (by the sha1 of its bytes, which the
index records) has a known class, is left out of its own neighbours, and the contact sheet
frames each neighbour green (same class) or red (another class); unknown queries get grey
frames. Distances are Euclidean between L2-normalised embeddings (0 = same direction, 2 =
opposite), the distance the retrieval metrics rank by.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from bgbias.data.datasets import DatasetIndex, Sample
from bgbias.core.images import load_rgb
from bgbias.core.errors import BgbiasError
from bgbias.core.files import save_image, write_bytes
from bgbias.data.inputs import content_digest

Embed = Callable[[np.ndarray], np.ndarray]  # uint8 [B, H, W, 3] -> float32 [B, dim] (a pyfunc model's predict)
BATCH = 64
TILE, BORDER, CAPTION = 112, 5, 28
GREEN, RED, GREY, BLUE = (30, 160, 60), (200, 40, 40), (150, 150, 150), (40, 90, 200)


@dataclass
class Hit:
    sample: Sample
    distance: float
    same_class: bool | None  # None: the query's class is unknown


@dataclass
class Result:
    image: Path
    query_class: str | None
    hits: list[Hit]


def read_query(path: Path) -> tuple[np.ndarray, str]:
    """uint8 [H, W, 3] and the sha1 of the file's bytes; a missing or undecodable file is a one-line error."""
    if not path.is_file():
        raise BgbiasError(f"query image not found: {path}")
    try:
        image = np.asarray(load_rgb(path))
    except (OSError, ValueError) as exc:
        raise BgbiasError(f"query image {path} cannot be decoded ({type(exc).__name__})") from None
    return image, hashlib.sha1(path.read_bytes()).hexdigest()


def embed_images(embed: Embed, images: Sequence[np.ndarray]) -> np.ndarray:
    """Embeddings in input order; images of one size go through the model together."""
    by_size: dict[tuple, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_size[image.shape].append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for positions in by_size.values():
        for start in range(0, len(positions), BATCH):
            chunk = positions[start:start + BATCH]
            for i, row in zip(chunk, np.asarray(embed(np.stack([images[i] for i in chunk])))):
                out[i] = row
    return np.stack(out).astype(np.float32)


def split_embeddings(embed: Embed, model_key: str, index: DatasetIndex, index_csv: Path,
                    cache_dir: Path) -> tuple[np.ndarray, list[Sample]]:
    """The test split's embeddings, from `cache_dir/<model key>-<index digest>.npy` when there."""
    samples = index.split("test")
    if not samples:
        raise BgbiasError(f"{index_csv}: the test split is empty")
    cache = cache_dir / f"{model_key}-{content_digest(index_csv)[1][:16]}.npy"
    if cache.is_file():
        cached = np.load(cache)
        if len(cached) == len(samples):
            return cached, samples
    images = []
    for sample in samples:
        try:
            images.append(np.asarray(load_rgb(index.root / sample.path)))
        except (OSError, ValueError) as exc:
            raise BgbiasError(f"test image {index.root / sample.path} cannot be read ({type(exc).__name__})") from None
    embeddings = embed_images(embed, images)
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    write_bytes(cache, buffer.getvalue())
    return embeddings, samples


def nearest(image: Path, query: np.ndarray, embeddings: np.ndarray, samples: list[Sample], k: int, query_sha1: str,
            by_sha1: dict[str, Sample]) -> Result:
    """The k nearest test images of one query embedding [dim], the query itself left out."""
    own = by_sha1.get(query_sha1)
    distances = np.linalg.norm(embeddings - query[None], axis=1)  # [N]
    order = [i for i in np.argsort(distances, kind="stable") if samples[i].sha1 != query_sha1][:k]
    hits = [Hit(samples[i], float(distances[i]), None if own is None else samples[i].class_id == own.class_id)
            for i in order]
    return Result(image, None if own is None else own.class_name, hits)


def run_query(embed: Embed, model_key: str, images: Sequence[Path], index: DatasetIndex, index_csv: Path,
              cache_dir: Path, k: int) -> list[Result]:
    if k < 1:
        raise BgbiasError(f"--k must be at least 1 (got {k})")
    queries = [read_query(Path(p)) for p in images]  # all checked before the (slow) test split is embedded
    embeddings, samples = split_embeddings(embed, model_key, index, index_csv, cache_dir)
    by_sha1 = {s.sha1: s for s in index.samples if s.sha1}
    query_embeddings = embed_images(embed, [image for image, _ in queries])
    return [nearest(Path(path), query, embeddings, samples, k, sha1, by_sha1)
            for path, (_, sha1), query in zip(images, queries, query_embeddings)]


def _tile(image: Image.Image, colour: tuple[int, int, int], caption: str) -> Image.Image:
    inner = TILE - 2 * BORDER
    tile = Image.new("RGB", (TILE, TILE + CAPTION), (255, 255, 255))
    tile.paste(colour, (0, 0, TILE, TILE))
    tile.paste(ImageOps.pad(image, (inner, inner), color=(255, 255, 255)), (BORDER, BORDER))
    ImageDraw.Draw(tile).text((BORDER, TILE + 2), caption, fill=(0, 0, 0))
    return tile


def check_sheet_path(out: Path) -> Path:
    """--out, checked before the (slow) model load: an image file name whose suffix names its
    format, not a folder."""
    out = Path(out)
    if out.suffix.lower() not in Image.registered_extensions() or out.is_dir():
        raise BgbiasError(f"--out {out}: expected an image file name such as contact_sheet.png "
                          "(the suffix names the format)")
    return out


def contact_sheet(results: list[Result], index_root: Path, out: Path) -> Path:
    """One row per query: the query (blue frame), then its neighbours by rising distance
    (green: same class, red: another class, grey: the query's class is unknown)."""
    check_sheet_path(out)
    columns = 1 + max(len(r.hits) for r in results)
    sheet = Image.new("RGB", (columns * TILE, len(results) * (TILE + CAPTION)), (255, 255, 255))
    for row, result in enumerate(results):
        y = row * (TILE + CAPTION)
        sheet.paste(_tile(load_rgb(result.image), BLUE, result.query_class or "query"), (0, y))
        for col, hit in enumerate(result.hits, start=1):
            colour = GREY if hit.same_class is None else GREEN if hit.same_class else RED
            tile = _tile(load_rgb(index_root / hit.sample.path), colour, f"{hit.distance:.3f}\n{hit.sample.class_name}")
            sheet.paste(tile, (col * TILE, y))
    save_image(out, sheet)
    return out


def format_results(results: list[Result]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result.image}  (class {result.query_class or 'unknown'})")
        for rank, hit in enumerate(result.hits, start=1):
            mark = "" if hit.same_class is None else "  same class" if hit.same_class else "  other class"
            lines.append(f"  {rank:2d}  {hit.distance:.4f}  {hit.sample.class_name}  {hit.sample.path}{mark}")
    return "\n".join(lines)
