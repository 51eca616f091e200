"""The torch masks engine's numerics and JPEG decoder on CUDA against its exact reference.

Per variant (network precision x decoder), over the same images (PNG writes left out; nvjpeg
decodes file bytes read beforehand, pillow reads and decodes each file in the timed loop, on
one thread): images/s of decode + LANCZOS + u2netp + post-processing,
and each image's mask IoU at 128 against the reference variant, fp32 with TF32 off on
Pillow-decoded pixels, which is onnxruntime's computation (checked here on the first
`--onnx-images` images against onnxruntime on the CPU). The goal for the default
(`masks.precision`): IoU >= 0.99 on every image.

    python benchmarks/masks_precision.py --source DIR [-n 2000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bgbias.core.images import load_rgb
from bgbias.masks.quality import iou_and_overlap
from bgbias.masks.compute import MaskJob, U2netpMasker
from bgbias.masks.torch_engine import TorchMasker, _decode_on_device, masks_on_device

REPO = Path(__file__).resolve().parents[1]
VARIANTS = (("fp32", "pillow"), ("fp32", "nvjpeg"), ("tf32", "nvjpeg"), ("fp16", "nvjpeg"), ("bf16", "nvjpeg"),
            ("bf16", "pillow"), ("fp16", "pillow"))


def run_variant(files: list[Path], data: list[bytes], precision: str, decoder: str, batch_size: int,
                model: Path, device: str) -> tuple[list[np.ndarray], float]:
    masker = TorchMasker(model, device, device_ops=True, precision=precision)
    masks: list[np.ndarray] = []

    def batch(start: int) -> list[np.ndarray]:
        chunk = range(start, min(start + batch_size, len(files)))
        if decoder == "nvjpeg":
            jobs = [MaskJob(files[i], Path("unused")) for i in chunk]
            images = _decode_on_device(jobs, [data[i] for i in chunk], masker.device)
        else:  # read and decoded here, one at a time: a lower bound next to the stage's decoding threads
            images = [torch.from_numpy(np.array(load_rgb(files[i]))).permute(2, 0, 1).to(masker.device) for i in chunk]
        return masks_on_device(masker, images)

    batch(0)  # warm-up: CUDA context, kernels, resize matrices
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for first in range(0, len(files), batch_size):
        masks.extend(batch(first))
    return masks, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder of JPEG images (searched recursively)")
    parser.add_argument("-n", "--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--onnx-images", type=int, default=40, help="images checked against onnxruntime (CPU)")
    parser.add_argument("--assets-dir", type=Path, default=REPO / "data" / "assets")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: only to try the script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    model = args.assets_dir / "u2netp.onnx"
    files = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.images]
    data = [p.read_bytes() for p in files]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{len(files)} JPEG images from {args.source}; {device}; batch {args.batch_size}; "
          f"torch {torch.__version__}")

    results = {variant: run_variant(files, data, *variant, args.batch_size, model, args.device) for variant in VARIANTS}
    reference = results[VARIANTS[0]][0]
    onnx = U2netpMasker(model, os.cpu_count() or 1)
    k = min(args.onnx_images, len(files))
    onnx_ious = [iou_and_overlap(np.asarray(onnx.predict(Image.open(f).convert("RGB"))), m)[0]
                 for f, m in zip(files[:k], reference[:k])]
    print(f"reference fp32/pillow vs onnxruntime (CPU), {k} images: IoU mean {np.mean(onnx_ious):.5f}, "
          f"worst {min(onnx_ious):.5f}")
    print(f"{'precision':>9} {'decoder':>7} {'images/s':>9} {'IoU mean':>9} {'worst':>7} {'< 0.99':>7} "
          f"{'mean |diff|':>11}  worst image")
    for (precision, decoder), (masks, seconds) in results.items():
        ious = [iou_and_overlap(a, b)[0] for a, b in zip(masks, reference)]
        diff = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(masks, reference)])
        worst = int(np.argmin(ious))
        print(f"{precision:>9} {decoder:>7} {len(files) / seconds:9.1f} {np.mean(ious):9.5f} {ious[worst]:7.4f} "
              f"{sum(i < 0.99 for i in ious):7d} {diff:11.3f}  {files[worst].relative_to(args.source)}")


if __name__ == "__main__":
    main()
