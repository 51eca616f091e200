"""Masks stage vs `rembg p -m u2netp -om` on the same folder, in the same run.

Both run as fresh processes on a flat folder (rembg p does not recurse), so both timings
are end to end, image files to PNG masks, start-up included. Prints images/s of each,
their ratio, and the IoU of our masks against rembg's, mean and worst image (rembg runs
onnxruntime in fp32 on the CPU: with `--backend torch --device cuda` this is the bf16
masks' IoU against the fp32 ones; goal >= 0.99).

    python benchmarks/masks.py                      # 200 synthetic images
    python benchmarks/masks.py --source DIR -n 100  # the first 100 images under DIR
    python benchmarks/masks.py --jpeg --backend torch --device cuda --batch-size 64
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


def _images(source: Path | None, n: int, tmp: Path, jpeg: bool) -> Path:
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
        if jpeg and path.suffix.lower() not in (".jpg", ".jpeg"):  # what GPU decoding reads
            Image.open(path).convert("RGB").save(flat / f"{i:05d}.jpg", quality=95)
        else:
            shutil.copy(path, flat / f"{i:05d}{path.suffix.lower()}")
    return flat


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _ious(a_dir: Path, b_dir: Path) -> list[float]:
    ious = []
    for a in sorted(a_dir.glob("*.png")):
        ma = np.asarray(Image.open(a)) >= 128
        mb = np.asarray(Image.open(b_dir / a.name).convert("L")) >= 128
        union = np.logical_or(ma, mb).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union))
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="folder of images (default: render synthetic ones)")
    parser.add_argument("-n", "--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="processes for the masks stage")
    parser.add_argument("--assets-dir", type=Path, default=REPO / "data" / "assets")
    parser.add_argument("--backend", default="onnxruntime", choices=("auto", "onnxruntime", "torch"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=16, help="images per torch batch")
    parser.add_argument("--jpeg", action="store_true", help="convert the images to JPEG (quality 95) first")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    rembg = bin_dir / "rembg"
    if not rembg.exists():
        sys.exit("the rembg CLI is missing: pip install -e '.[bench]' (or run `make bench`)")
    env = dict(os.environ, U2NET_HOME=str(args.assets_dir))  # rembg finds u2netp.onnx there, offline

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = _images(args.source, args.images, tmp, args.jpeg)
        count = len(list(images.iterdir()))
        engine = ["--backend", args.backend, "--device", args.device, "--batch-size", str(args.batch_size)]
        ours = _timed([str(bin_dir / "bgbias"), "masks", str(images), str(tmp / "ours"), "--workers",
                       str(args.workers), "--assets-dir", str(args.assets_dir), *engine], env)
        theirs = _timed([str(rembg), "p", "-m", "u2netp", "-om", str(images), str(tmp / "rembg")], env)
        ious = _ious(tmp / "ours", tmp / "rembg")

    kind = "synthetic 96 px" if args.source is None else str(args.source)
    print(f"images: {count} ({kind}{', as JPEG' if args.jpeg else ''}), cpu cores: {os.cpu_count()}, {_device(args.device)}")
    print(f"bgbias masks ({' '.join(engine)}, workers={args.workers}): {ours:7.1f} s  {count / ours:8.2f} images/s")
    print(f"rembg p -m u2netp -om (CPU): {theirs:7.1f} s  {count / theirs:8.2f} images/s")
    print(f"speed-up: {theirs / ours:.2f}x   IoU ours vs rembg's fp32 masks (threshold 128): "
          f"mean {np.mean(ious):.4f}, worst image {min(ious):.4f}")


def _device(device: str) -> str:
    if device != "cuda":
        return "device: cpu"
    import torch

    return f"device: {torch.cuda.get_device_name()}"


if __name__ == "__main__":
    main()
