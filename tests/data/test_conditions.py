"""Background-swap test images: the object region, its removal, partner draws, only_fg."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgbias.data.conditions import object_region, only_fg, partners, remove_object
from bgbias.core.seeds import Stream, stream_rng
from bgbias.core.errors import BgbiasError


def test_object_region_is_the_mask_above_half_grown_by_two_pixels():
    mask = np.zeros((9, 9), dtype=np.float32)
    mask[4, 4], mask[0, 8] = 0.9, 0.5  # 0.5 is not above the threshold
    region = object_region(mask)
    # Two 4-connected dilations of one pixel: the diamond |dy| + |dx| <= 2 (13 pixels).
    yy, xx = np.mgrid[0:9, 0:9]
    assert np.array_equal(region, np.abs(yy - 4) + np.abs(xx - 4) <= 2)
    assert not object_region(np.zeros((5, 5))).any()


def test_remove_object_fills_the_region_from_its_surroundings():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:] = (20, 120, 200)  # a flat background: the fill must be exactly it
    image[10:20, 12:22] = (250, 0, 0)  # the object
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[10:20, 12:22] = 1.0
    filled = remove_object(image, mask)
    assert filled.dtype == np.uint8 and filled.shape == image.shape
    assert np.abs(filled.astype(int) - (20, 120, 200)).max() <= 1
    assert np.array_equal(remove_object(image, np.zeros_like(mask)), image)
    assert (remove_object(image, np.ones_like(mask)) == 128).all()  # nothing to fill from


def test_partners_same_class_and_other_class():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    same = partners(labels, True, stream_rng(0, Stream.MIXED_SAME, 0))
    rand = partners(labels, False, stream_rng(0, Stream.MIXED_RAND, 0))
    idx = np.arange(len(labels))
    assert (same != idx).all() and (labels[same] == labels).all()
    assert (labels[rand] != labels).all()
    assert np.array_equal(same, partners(labels, True, stream_rng(0, Stream.MIXED_SAME, 0)))  # seeded
    draws = {tuple(partners(labels, True, stream_rng(0, Stream.MIXED_SAME, d))) for d in range(5)}
    assert len(draws) > 1
    with pytest.raises(BgbiasError, match="mixed_same"):
        partners(np.array([0, 1, 1]), True, np.random.default_rng(0))
    with pytest.raises(BgbiasError, match="mixed_rand"):
        partners(np.array([1, 1]), False, np.random.default_rng(0))


def test_only_fg_blackens_the_background():
    images = torch.full((1, 3, 2, 2), 0.8)
    masks = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    assert torch.allclose(only_fg(images, masks)[0, 0], torch.tensor([[0.8, 0.0], [0.4, 0.0]]))
