"""BGAugment compositing, pixel by pixel, and the background draws."""

from __future__ import annotations

import torch

from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool, composite, replace_backgrounds


def test_composite_by_hand():
    image = torch.tensor([[[0.8, 0.8], [0.8, 0.8]]]).expand(3, 2, 2)[None]  # [1, 3, 2, 2]
    background = torch.tensor([[[0.2, 0.4], [0.6, 1.0]]]).expand(3, 2, 2)[None]
    mask = torch.tensor([[[[1.0, 0.0], [0.5, 0.25]]]])  # [1, 1, 2, 2]
    out = composite(image, mask, background)
    # 0.8*1 + 0.2*0 = 0.8; 0.8*0 + 0.4*1 = 0.4; 0.8*.5 + 0.6*.5 = 0.7; 0.8*.25 + 1.0*.75 = 0.95
    expected = torch.tensor([[0.8, 0.4], [0.7, 0.95]])
    assert torch.allclose(out[0, 0], expected) and torch.allclose(out[0, 2], expected)


def _pool():
    photos = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 96  # two distinct 4x4 photos
    return BackgroundPool(photos)


def test_full_crop_renders_the_photo_itself():
    pool = _pool()
    draw = BackgroundDraw(torch.tensor([1, 0]), torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    rendered = pool.render(draw, 4, 4)
    assert torch.allclose(rendered[0], pool.photos[1], atol=1e-6)
    assert torch.allclose(rendered[1], pool.photos[0], atol=1e-6)


def test_half_crop_renders_one_quadrant():
    pool = _pool()
    # Side 0.5 centred at (-0.5, -0.5) in grid units: the top-left 2x2 quadrant, upsampled to 2x2 = itself.
    draw = BackgroundDraw(torch.tensor([0]), torch.tensor([[0.5, -0.5, -0.5]]))
    assert torch.allclose(pool.render(draw, 2, 2)[0], pool.photos[0, :, :2, :2], atol=1e-6)


def test_replacement_changes_only_background_pixels():
    pool = _pool()
    image = torch.full((2, 3, 4, 4), 0.5)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 1:3, 1:3] = 1.0  # object in the centre
    draw = BackgroundDraw(torch.tensor([0, 1]), torch.tensor([[1.0, 0.0, 0.0]] * 2))
    out = replace_backgrounds(image, mask, pool, draw, apply=torch.tensor([True, False]))
    assert torch.equal(out[0, :, 1:3, 1:3], image[0, :, 1:3, 1:3])  # object kept
    assert torch.allclose(out[0, :, 0, :], pool.photos[0, :, 0, :], atol=1e-6)  # background replaced
    assert torch.equal(out[1], image[1])  # not applied: unchanged


def test_draws_are_reproducible_and_stay_inside_the_photo():
    pool = _pool()
    a = pool.draw(500, torch.Generator().manual_seed(7))
    b = pool.draw(500, torch.Generator().manual_seed(7))
    assert torch.equal(a.photo, b.photo) and torch.equal(a.box, b.box)
    side, centre = a.box[:, 0], a.box[:, 1:]
    assert (side >= 0.4).all() and (side <= 1.0).all()
    assert ((centre.abs() + side[:, None]) <= 1.0 + 1e-6).all()  # crop edges inside [-1, 1]
    assert set(a.photo.tolist()) == {0, 1}
