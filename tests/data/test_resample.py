"""The torch LANCZOS resize gives Pillow's bytes exactly (rembg's pre/post-processing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bgbias.masks.resample import coefficients, resize_lanczos

# Up and down (by up to 3x), odd sizes, one side unchanged, degenerate 1 px inputs.
CASES = [((96, 96), (120, 120)), ((150, 113), (40, 40)), ((40, 40), (150, 113)), ((11, 301), (40, 40)),
         ((64, 64), (7, 3)), ((64, 64), (64, 20)), ((1, 5), (30, 30))]


@pytest.mark.parametrize(("shape", "size"), CASES)
def test_equals_pillow_bit_for_bit(shape, size):
    rs = np.random.RandomState(sum(shape))
    noise = rs.randint(0, 256, (*shape, 3)).astype(np.uint8)  # overshoots: exercises the clipping
    smooth = np.clip(np.cumsum(rs.randn(*shape, 3), 0) * 20 + 128, 0, 255).astype(np.uint8)
    for array in (noise, smooth):
        expected = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS))
        got = resize_lanczos(torch.from_numpy(array).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected)
    gray = smooth[:, :, 0]  # masks are mode L
    expected = np.asarray(Image.fromarray(gray, mode="L").resize(size, Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resize_lanczos(torch.from_numpy(gray), size).numpy(), expected)


def test_weights_sum_to_one_in_fixed_point():
    # Pillow's normalisation: each output pixel's weights sum to 2**22 up to the rounding of each tap.
    _, fixed = coefficients(500, 320)
    taps = (fixed != 0).sum(axis=1)
    assert np.all(np.abs(fixed.sum(axis=1) - (1 << 22)) <= taps)
