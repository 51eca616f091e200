"""Masks stage vs `rembg p -m u2netp -om` on the same folder, in the same run.

Both run as fresh processes on a flat folder (rembg p does not recurse), so both timings
are end to end, image files to PNG masks, start-up included. Prints images/s of each,
their ratio, and the IoU of our masks against rembg's, mean and worst image (rembg runs
onnxruntime in fp32 on the CPU: with `--backend torch --device cuda` this is the bf16
masks' IoU against the fp32 ones; goal >= 0.99).

    python benchmarks/masks.py                      # 200 synthetic images
    python benchmarks/masks.py --source DIR -n 100  # the first 100 images under DIR
    python benchmarks/masks.py --jpeg --backend torch --device cuda --batch-size 64
    python benchmarks/masks.py --source DIR --copies 8 --reference-images 300 --backend torch --device cuda

`--copies K` runs every image K times (under K names), so that a GPU run is long enough to
time; `--reference-images N` runs the CPU reference on the first N images only (its images/s
and the IoU are over those). Besides the end-to-end rate (process start-up included), the
marginal rate (N - 1) / (t(N) - t(1)) leaves out start-up (imports, CUDA, model load).
The reference is the rembg CLI (`pip install -e '.[bench]'`, `make bench`); where it is not
installed (a GPU machine without the CLI's web-server dependencies), rembg's library in
`rembg p`'s own loop (one session, `remove(..., only_mask=True)` per file, PNG written).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bgbias.masks.quality import iou_and_overlap

REPO = Path(__file__).resolve().parents[1]


REMBG_LOOP = """
import sys
from pathlib import Path
from rembg import new_session, remove
session = new_session("u2netp")
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(Path(sys.argv[1]).iterdir()):
    (out / path.with_suffix(".png").name).write_bytes(remove(path.read_bytes(), session=session, only_mask=True))
"""


def _images(source: Path | None, n: int, tmp: Path, jpeg: bool, copies: int = 1) -> Path:
    flat = tmp / "images"
    flat.mkdir()
    if source is None:
        from bgbias.core.config import SyntheticConfig, SyntheticClasses
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
    for copy in range(1, copies):  # the same bytes under another name: another job for the stage
        for path in sorted(flat.glob("?????.*")):
            os.link(path, flat / f"{copy:02d}_{path.name}")
    return flat


def _first(images: Path, n: int, folder: Path) -> Path:
    """A folder holding (links to) the first n images."""
    folder.mkdir()
    for path in sorted(images.iterdir())[:n]:
        os.link(path, folder / path.name)
    return folder


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _ious(a_dir: Path, b_dir: Path) -> list[float]:
    ious = []
    for b in sorted(b_dir.glob("*.png")):  # the reference's images (all, or the first N)
        ious.append(iou_and_overlap(np.asarray(Image.open(a_dir / b.name)), np.asarray(Image.open(b).convert("L")))[0])
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
    parser.add_argument("--precision", choices=("fp32", "tf32", "fp16"),
                        help="torch engine's numerics on CUDA (default: masks.precision)")
    parser.add_argument("--decoder", choices=("pillow", "nvjpeg"), help="JPEG decoder on CUDA (default: masks.decoder)")
    parser.add_argument("--jpeg", action="store_true", help="convert the images to JPEG (quality 95) first")
    parser.add_argument("--copies", type=int, default=1, help="run every image this many times (GPU timing)")
    parser.add_argument("--reference-images", type=int, default=None,
                        help="run the CPU reference on the first N images only (default: all)")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    bgbias = [str(bin_dir / "bgbias")] if (bin_dir / "bgbias").exists() else [sys.executable, "-m", "bgbias"]
    rembg = bin_dir / "rembg"
    if rembg.exists() and all(importlib.util.find_spec(m) for m in ("click", "filetype", "watchdog")):
        reference, reference_name = [str(rembg), "p", "-m", "u2netp", "-om"], "rembg p -m u2netp -om"
    else:
        reference, reference_name = [sys.executable, "-c", REMBG_LOOP], "rembg's library in rembg p's loop"
    env = dict(os.environ, U2NET_HOME=str(args.assets_dir))  # rembg finds u2netp.onnx there, offline

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = _images(args.source, args.images, tmp, args.jpeg, args.copies)
        count = len(list(images.iterdir()))
        engine = ["--backend", args.backend, "--device", args.device, "--batch-size", str(args.batch_size)]
        engine += ["--precision", args.precision] if args.precision else []
        engine += ["--decoder", args.decoder] if args.decoder else []

        def ours(folder: Path, out: str) -> float:
            return _timed([*bgbias, "masks", str(folder), str(tmp / out), "--workers", str(args.workers),
                           "--assets-dir", str(args.assets_dir), *engine], env)

        startup = ours(_first(images, 1, tmp / "one"), "ours_one")
        seconds = ours(images, "ours")
        ref_count = min(count, args.reference_images or count)
        ref_images = images if ref_count == count else _first(images, ref_count, tmp / "reference_images")
        theirs = _timed([*reference, str(ref_images), str(tmp / "rembg")], env)
        ious = _ious(tmp / "ours", tmp / "rembg")

    kind = "synthetic 96 px" if args.source is None else str(args.source)
    print(f"images: {count} ({kind}{', as JPEG' if args.jpeg else ''}"
          f"{f', each {args.copies} times' if args.copies > 1 else ''}), cpu cores: {os.cpu_count()}, "
          f"{_device(args.device)}")
    print(f"bgbias masks ({' '.join(engine)}, workers={args.workers}): {seconds:7.1f} s  {count / seconds:8.2f} "
          f"images/s end to end; one image {startup:.1f} s; marginal {(count - 1) / max(seconds - startup, 1e-9):8.2f} "
          f"images/s")
    print(f"{reference_name} (CPU, {ref_count} images): {theirs:7.1f} s  {ref_count / theirs:8.2f} images/s")
    print(f"speed-up (images/s): {(count / seconds) / (ref_count / theirs):.2f}x   IoU ours vs rembg's fp32 masks "
          f"(threshold 128, {len(ious)} images): mean {np.mean(ious):.4f}, worst image {min(ious):.4f}")


def _device(device: str) -> str:
    if device != "cuda":
        return "device: cpu"
    import torch

    return f"device: {torch.cuda.get_device_name()}"


if __name__ == "__main__":
    main()
