"""Masks stage vs `rembg p -m u2netp -om` on the same folder, in the same run.

Both run as fresh processes on a flat folder (rembg p does not recurse), so both timings
include start-up. Prints images/s of each, their ratio, and the IoU of our masks against
rembg's (they should be identical: same model, same pre/post-processing).

    python benchmarks/masks.py                      # 200 synthetic images
    python benchmarks/masks.py --source DIR -n 100  # the first 100 images under DIR
Needs `pip install -e '.[bench]'` for the rembg CLI (`make bench` does it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _images(source: Path | None, n: int, tmp: Path) -> Path:
    flat = tmp / "images"
    flat.mkdir()
    if source is None:
        from bgbias.config import SyntheticConfig, SyntheticClasses
        from bgbias.data.synthetic import generate

        per_class = 20
        classes = max(1, -(-n // per_class))
        cfg = SyntheticConfig(classes=SyntheticClasses(train=classes, val=1, test=1), images_per_class=per_class)
        generate(cfg, seed=0, out_dir=tmp / "synthetic")
        source = tmp / "synthetic" / "images"
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    for i, path in enumerate(files):
        shutil.copy(path, flat / f"{i:05d}{path.suffix.lower()}")
    return flat


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _mean_iou(a_dir: Path, b_dir: Path) -> float:
    ious = []
    for a in sorted(a_dir.glob("*.png")):
        ma = np.asarray(Image.open(a)) >= 128
        mb = np.asarray(Image.open(b_dir / a.name).convert("L")) >= 128
        union = np.logical_or(ma, mb).sum()
        ious.append(1.0 if union == 0 else np.logical_and(ma, mb).sum() / union)
    return float(np.mean(ious))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="folder of images (default: render synthetic ones)")
    parser.add_argument("-n", "--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="processes for the masks stage")
    parser.add_argument("--assets-dir", type=Path, default=REPO / "data" / "assets")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    rembg = bin_dir / "rembg"
    if not rembg.exists():
        sys.exit("the rembg CLI is missing: pip install -e '.[bench]' (or run `make bench`)")
    env = dict(os.environ, U2NET_HOME=str(args.assets_dir))  # rembg finds u2netp.onnx there, offline

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = _images(args.source, args.images, tmp)
        count = len(list(images.iterdir()))
        ours = _timed([str(bin_dir / "bgbias"), "masks", str(images), str(tmp / "ours"),
                       "--workers", str(args.workers), "--assets-dir", str(args.assets_dir)], env)
        theirs = _timed([str(rembg), "p", "-m", "u2netp", "-om", str(images), str(tmp / "rembg")], env)
        iou = _mean_iou(tmp / "ours", tmp / "rembg")

    print(f"images: {count} ({'synthetic 96 px' if args.source is None else args.source}), cpu cores: {os.cpu_count()}")
    print(f"bgbias masks (workers={args.workers}): {ours:7.1f} s  {count / ours:6.2f} images/s")
    print(f"rembg p -m u2netp -om:      {theirs:7.1f} s  {count / theirs:6.2f} images/s")
    print(f"speed-up: {theirs / ours:.2f}x   mean IoU ours vs rembg (threshold 128): {iou:.4f}")


if __name__ == "__main__":
    main()
