"""Batched RandomResizedCrop + flip on the device: torchvision's boxes and pixels."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF

from bgbias.data.device_crops import crop_boxes, random_resized_crops, resized_crops


def smooth_image(seed: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(4, height, width, generator=g) * 255).to(torch.uint8)
    return TF.gaussian_blur(noise, [5, 5])


def padded(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = max(x.shape[1] for x in images), max(x.shape[2] for x in images)
    batch = torch.zeros(len(images), 4, h + 3, w + 5, dtype=torch.uint8)  # extra padding: must never be sampled
    for b, x in enumerate(images):
        batch[b, :, : x.shape[1], : x.shape[2]] = x
    return batch, torch.tensor([[x.shape[1], x.shape[2]] for x in images])


def test_pixels_are_torchvisions_resized_crop():
    images = [smooth_image(0, 40, 56), smooth_image(1, 48, 40)]
    batch, _ = padded(images)
    # (top, left, height, width): upscaled, one side exact, the whole image (downscaled).
    for boxes in ([[3, 5, 20, 25], [0, 0, 31, 32]], [[10, 20, 30, 30], [17, 8, 31, 32]], [[0, 0, 40, 56], [0, 0, 48, 40]]):
        flips = torch.tensor([False, True])
        out = resized_crops(batch, torch.tensor(boxes), flips, 32)
        for b, (image, box) in enumerate(zip(images, boxes)):
            expected = TF.resized_crop(image.float(), *box, [32, 32], antialias=False)
            expected = expected.flip(-1) if flips[b] else expected
            # float resize, no antialiasing: equal up to float rounding
            assert (out[b] - expected).abs().max() < 1e-3
            if box[2] <= 32 and box[3] <= 32:
                # Today's path resizes the uint8 tensor with fixed-point weights and rounds to
                # uint8; upscaling, antialiasing changes nothing: at most one level apart.
                today = TF.resized_crop(image, *box, [32, 32], antialias=True).float()
                today = today.flip(-1) if flips[b] else today
                assert (out[b] - today).abs().max() <= 1.0


def test_boxes_follow_torchvisions_rules():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[40, 56]] * 500 + [[48, 40]] * 500)
    boxes = crop_boxes(sizes, (0.16, 1.0), (0.75, 4 / 3), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()
    share = (h * w).double() / (sizes[:, 0] * sizes[:, 1])
    assert share.min() >= 0.14 and share.max() <= 1.0  # 0.16 up to rounding h and w
    assert (left > 0).any() and (top > 0).any() and len(set(map(tuple, boxes.tolist()))) > 300
    # No try can fit (area share 1 at aspect 2..3 of a square): torchvision's centre crop.
    fallback = crop_boxes(torch.tensor([[30, 30], [30, 90]]), (1.0, 1.0), (2.0, 3.0), g)
    assert fallback.tolist() == [[7, 0, 15, 30], [0, 0, 30, 90]]


def test_random_crops_are_seeded_and_shaped():
    batch, sizes = padded([smooth_image(0, 40, 56), smooth_image(1, 48, 40)])
    a = random_resized_crops(batch, sizes, 32, (0.16, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(5))
    b = random_resized_crops(batch, sizes, 32, (0.16, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(5))
    assert a.shape == (2, 4, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 255
