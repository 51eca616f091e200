"""Pillow's LANCZOS resize of uint8 images, bit for bit, in torch (so it runs on the GPU).

rembg resizes every image to 320x320 and every mask back with `Image.resize(LANCZOS)`.
Pillow computes, per output pixel, float64 filter weights normalised to sum 1, rounds them
to fixed point with 22 fractional bits, and sums `pixel * weight` in integers with
round-half-up, horizontal pass first (rounded and clipped to uint8), then vertical
(libImaging/Resample.c). Doing the same integer arithmetic here gives the same bytes,
batched over a folder's worth of images on any device (tests compare with Pillow).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's, for 8-bit images
SUPPORT = 3.0  # Lanczos-3


def _lanczos(x: np.ndarray) -> np.ndarray:
    def sinc(v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(v == 0.0, 1.0, np.sin(v * math.pi) / (v * math.pi))

    return np.where((x >= -SUPPORT) & (x < SUPPORT), sinc(x) * sinc(x / SUPPORT), 0.0)


def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(input index per output pixel and tap, int64 fixed-point weights), both (out, taps),
    as Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box (0, in_size)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # C casts truncate; clamped anyway
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - xmin
    k = np.arange(taps)
    weights = _lanczos((xmin[:, None] + k[None, :] - centers[:, None] + 0.5) / filterscale)
    weights = np.where(k[None, :] < xmax[:, None], weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=weights, where=total != 0.0)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    # Taps past the image end carry weight 0; point them at a valid pixel.
    index = np.minimum(xmin[:, None] + k[None, :], in_size - 1)
    return index, fixed


def matrix(in_size: int, out_size: int) -> np.ndarray:
    """(in_size, out_size) float64 matrix of the fixed-point weights. Every product and
    partial sum is an integer below 2**53, so a float64 matmul sums them exactly, in any
    order, on any device (no (pixels x taps) gather: a 4000 px photo stays cheap)."""
    index, fixed = coefficients(in_size, out_size)
    out = np.zeros((in_size, out_size))
    np.add.at(out, (index, np.broadcast_to(np.arange(out_size)[:, None], index.shape)), fixed)
    return out


@functools.lru_cache(maxsize=32)
def _device_matrix(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """`matrix` on `device`, made and copied once per size pair (a 4000 px side to 320 is
    10 MB: few are kept; a folder of many sizes remakes them, ~1 ms each)."""
    return torch.from_numpy(matrix(in_size, out_size)).to(device)


def _pass(image: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One 1-D pass along `dim` of a float64 (..., H, W) tensor of uint8 values."""
    weights = _device_matrix(image.shape[dim], out_size, image.device)
    acc = image.movedim(dim, -1) @ weights + (1 << (PRECISION_BITS - 1))
    return torch.clamp(torch.floor(acc / (1 << PRECISION_BITS)), 0, 255).movedim(-1, dim)


def resize_lanczos(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (..., H, W) to (..., height, width) exactly as Pillow's LANCZOS (size is (width, height))."""
    width, height = size
    out = image.to(torch.float64)
    if out.shape[-1] != width:
        out = _pass(out, width, -1)
    if out.shape[-2] != height:
        out = _pass(out, height, -2)
    return out.to(torch.uint8)
