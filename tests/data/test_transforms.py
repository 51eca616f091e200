"""The mask follows the image through every random crop, resize and flip."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from bgbias.core.config import TrainConfig
from bgbias.data.transforms import eval_transform, split_batch, train_transform


def _image_whose_mask_is_its_red_channel(h=60, w=80):
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return tv_tensors.Image(torch.cat([rgb, rgb[:1]]))  # channel 3 = channel 0


def test_mask_follows_random_crop_and_flip():
    cfg = TrainConfig(resize=48, crop=32)
    transform = train_transform(cfg)
    x = _image_whose_mask_is_its_red_channel()
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(x)
        assert out.shape == (4, 32, 32)
        # Same geometry and interpolation for every channel: the mask still equals red.
        assert torch.equal(out[3], out[0])
    # Against a hand-made case: a left-half mask, flipped with p=1 by a crop covering everything.
    x = torch.zeros(4, 16, 16, dtype=torch.uint8)
    x[3, :, :8] = 255
    x[0, :, :8] = 255
    full = TrainConfig(resize=16, crop=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    flips = {torch.equal(out[3, :, 8:], torch.full((16, 8), 255, dtype=torch.uint8))
             for out in (train_transform(full)(tv_tensors.Image(x)) for _ in range(30))}
    assert flips == {True, False}  # both flipped and unflipped outcomes, the mask moving with the image


def test_eval_transform_resizes_short_side_then_centre_crops():
    cfg = TrainConfig(resize=40, crop=32)
    out = eval_transform(cfg)(_image_whose_mask_is_its_red_channel(60, 80))
    assert out.shape == (4, 32, 32) and torch.equal(out[3], out[0])


def test_split_batch_scales_to_unit_range():
    batch = torch.tensor([0, 51, 255, 255], dtype=torch.uint8).view(1, 4, 1, 1)
    images, masks = split_batch(batch)
    assert images.shape == (1, 3, 1, 1) and masks.shape == (1, 1, 1, 1)
    assert torch.allclose(images.flatten(), torch.tensor([0.0, 0.2, 1.0])) and masks.item() == 1.0
