"""The decode-free store: the pixels of today's path (eval: exactly; training crops: up to
resampling), refused when stale, and the default pipeline untouched when disabled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from bgbias.core.config import TrainConfig
from bgbias.data.datasets import DatasetIndex, Sample
from bgbias.data.device_crops import resized_crops
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.data.prepared import MANIFEST, open_split, pad_collate, prepare, write_disabled
from bgbias.data.transforms import eval_transform
from bgbias.core.errors import BgbiasError

SIZES = {"train": [(64, 80), (96, 64), (120, 96)], "val": [(70, 52), (36, 90)]}  # (W, H); train: 2x, 2x, 3x of 32


def smooth(seed: int, width: int, height: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    waves = [np.sin(2 * np.pi * (rng.random() * 2 * xx + rng.random() * 2 * yy + rng.random())) for _ in range(channels)]
    return np.clip(np.stack(waves, -1) * 100 + 128, 0, 255).astype(np.uint8).squeeze()


@pytest.fixture
def store(tmp_path) -> tuple[DatasetIndex, object]:
    samples = []
    for split, sizes in SIZES.items():
        for i, (w, h) in enumerate(sizes):
            path = f"{split}/{i}.png"
            (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(smooth(i, w, h, 3)).save(tmp_path / "images" / path)
            Image.fromarray(smooth(10 + i, w, h, 1), mode="L").save(tmp_path / "masks" / path)
            samples.append(Sample(path, i % 2 + 1, f"c{i % 2}", split, f"sha{split}{i}"))
    index = DatasetIndex(tmp_path / "images", samples)
    prepare(index, tmp_path / "masks", tmp_path / "prepared", resize=32)
    return index, tmp_path


def test_store_holds_todays_resized_tensors_and_val_batches_are_exact(store):
    index, root = store
    cfg = TrainConfig(resize=32, crop=28)
    for split in ("train", "val"):
        today = MaskedImageDataset(index.split(split), index.root, root / "masks")
        stored = open_split(root / "prepared", index.split(split), split, 32)
        for i in range(len(today)):
            expected = TF.resize(today.load(i), 32, antialias=True).as_subclass(torch.Tensor)
            assert torch.equal(stored.load(i), expected)
            assert min(stored.load(i).shape[1:]) == 32
    today_val = MaskedImageDataset(index.split("val"), index.root, root / "masks", eval_transform(cfg))
    stored_val = open_split(root / "prepared", index.split("val"), "val", 32, v2.CenterCrop(cfg.crop))
    for i in range(len(today_val)):
        assert torch.equal(stored_val[i][0], today_val[i][0]) and stored_val[i][1:] == today_val[i][1:]


def test_training_crops_match_todays_up_to_resampling(store):
    # Today: the box is cut from the full-size image and resized once (antialiased, uint8).
    # Prepared: the image was first resized to shorter side 32 (2x, 3x), the same box in its
    # coordinates is cut from that and resized on the device (bilinear, float). Two
    # resamplings instead of one, each blurring a little differently, on a smooth image:
    # mean difference <= 1 level of 255, max <= 6 levels; the same box shifted by one stored
    # pixel (a real geometry error) differs by >= 5 levels on average.
    index, root = store
    today = MaskedImageDataset(index.split("train"), index.root, root / "masks")
    stored = open_split(root / "prepared", index.split("train"), "train", 32)
    (batch, sizes), labels, order = pad_collate([stored[i] for i in range(len(stored))])
    assert torch.equal(order, torch.arange(3)) and labels.tolist() == [0, 1, 0]
    for b in range(len(stored)):
        full = today.load(b).as_subclass(torch.Tensor)
        h, w = sizes[b].tolist()
        factor = full.shape[1] // h  # exact: the sizes are multiples of 32
        box = [2, 3, h - 6, w - 5]  # top, left, height, width in the stored image
        full_box = [v * factor for v in box]
        got = resized_crops(batch[b : b + 1], torch.tensor([box]), torch.tensor([False]), 24)[0]
        expected = TF.resized_crop(full, *full_box, [24, 24], antialias=True).float()
        shifted = resized_crops(batch[b : b + 1], torch.tensor([[3, 3, h - 6, w - 5]]), torch.tensor([False]), 24)[0]
        diff, control = (got - expected).abs(), (shifted - expected).abs()
        assert diff.mean() <= 1.0 and diff.max() <= 6.0  # measured: mean 0.4-0.6, max 3.9-4.8 levels
        assert control.mean() >= 5.0  # the tolerance tells a box one pixel off (measured 8.9-9.8)


def test_stale_or_disabled_store_is_refused(store):
    index, root = store
    with pytest.raises(BgbiasError, match="train.resize=40"):
        open_split(root / "prepared", index.split("train"), "train", 40)
    changed = [Sample(s.path, s.class_id, s.class_name, s.split, "other") for s in index.split("train")]
    with pytest.raises(BgbiasError, match="not the index's"):
        open_split(root / "prepared", changed, "train", 32)
    assert write_disabled(root / "prepared") == {"enabled": False}
    assert sorted(p.name for p in (root / "prepared").iterdir()) == [MANIFEST]
    with pytest.raises(BgbiasError, match="enabled=False"):
        open_split(root / "prepared", index.split("train"), "train", 32)
    assert json.loads((root / "prepared" / MANIFEST).read_text()) == {"enabled": False}


def test_unreadable_image_is_a_one_line_error(store):
    index, root = store
    (root / "images" / "val" / "1.png").write_bytes(b"not an image")
    with pytest.raises(BgbiasError, match=r"val/1.png: cannot be read"):
        prepare(index, root / "masks", root / "again", resize=32)
