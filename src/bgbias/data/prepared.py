"""Decode-free training input (opt-in, `prepare.enabled`): every train/val image and its
mask stored once, resized so the shorter side is `train.resize`, as uint8.

Per split, `<split>.u8` holds the images back to back, each as [4, H, W] (RGB + mask, the
tensor `MaskedImageDataset.load` makes, resized by the eval transform's `Resize`), and
`<split>.index.npy` an int64 [N, 3] table (byte offset, H, W). Training memory-maps the file:
no JPEG decoding or resizing per epoch, only a copy of the bytes. `manifest.json` records
the resize, and each split's image paths and sha1s, so a store that no longer matches the
index or `train.resize` is refused instead of read. Disabled, the stage writes only a
manifest saying so (the folder is a DVC output the training stage depends on).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from bgbias.data.datasets import DatasetIndex, Sample
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.core.errors import BgbiasError
from bgbias.core.files import atomic_write, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
VERSION = 1


def _identity(samples: list[Sample]) -> list[list[str]]:
    return [[s.path, s.sha1] for s in samples]


def write_split(dataset: MaskedImageDataset, resize: int, out_dir: Path, split: str, threads: int = 2) -> int:
    """Store one split; returns its bytes. Images decode on threads (Pillow releases the GIL)."""
    shrink = v2.Resize(resize, antialias=True)  # the eval transform's first step, bit for bit
    table = np.zeros((len(dataset), 3), dtype=np.int64)

    def load(i: int) -> torch.Tensor:
        try:
            return shrink(dataset.load(i)).as_subclass(torch.Tensor)
        except (OSError, ValueError) as exc:  # changed since the index checked it
            raise BgbiasError(f"{dataset.root / dataset.samples[i].path}: cannot be read ({exc}); "
                              "run `dvc repro index` again") from None

    def write(tmp: Path) -> None:
        offset = 0
        with open(tmp, "wb") as out, ThreadPoolExecutor(threads) as pool:
            for i, x in enumerate(pool.map(load, range(len(dataset)))):
                out.write(x.contiguous().numpy().tobytes())
                table[i] = (offset, x.shape[1], x.shape[2])
                offset += x.numel()

    atomic_write(out_dir / f"{split}.u8", write)
    atomic_write(out_dir / f"{split}.index.npy", lambda tmp: _save_array(tmp, table))
    return int((table[:, 1] * table[:, 2]).sum() * 4)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, array)


def prepare(index: DatasetIndex, masks_dir: Path, out_dir: Path, resize: int) -> dict:
    """Store the train and val splits under `out_dir`; returns the manifest."""
    splits = {}
    for split in SPLITS:
        samples = index.split(split)
        size = write_split(MaskedImageDataset(samples, index.root, masks_dir), resize, out_dir, split)
        splits[split] = {"images": len(samples), "bytes": size, "samples": _identity(samples)}
    manifest = {"enabled": True, "version": VERSION, "resize": resize, "splits": splits}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def write_disabled(out_dir: Path) -> dict:
    """The disabled stage's output: a manifest saying so (and no stored images left behind)."""
    for split in SPLITS:
        for name in (f"{split}.u8", f"{split}.index.npy"):
            (out_dir / name).unlink(missing_ok=True)
    manifest = {"enabled": False}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


class PreparedImageDataset(MaskedImageDataset):
    """A split of the store: `load(i)` is the [4, H, W] uint8 tensor that `MaskedImageDataset`
    would give after `Resize(train.resize)`, read from the memory-mapped file."""

    def __init__(self, samples, folder: Path, split: str, transform=None):
        super().__init__(samples, folder, folder, transform)
        self.data_path = Path(folder) / f"{split}.u8"
        self.table = np.load(Path(folder) / f"{split}.index.npy")
        self._data: np.ndarray | None = None  # mapped on first use, in each loader worker

    def load(self, i: int) -> torch.Tensor:
        if self._data is None:
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.table[i])
        return torch.from_numpy(np.array(self._data[offset : offset + 4 * height * width])).view(4, height, width)

    def __getstate__(self) -> dict:  # a worker maps the file itself instead of receiving its bytes
        return {**self.__dict__, "_data": None}


def open_split(folder: Path, samples: list[Sample], split: str, resize: int, transform=None) -> PreparedImageDataset:
    """The stored split, checked against the current index split and `train.resize`."""
    import json

    manifest_path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BgbiasError(f"{manifest_path} not found or unreadable (run `dvc repro prepare`)") from None
    if not manifest.get("enabled") or manifest.get("version") != VERSION or manifest.get("resize") != resize:
        raise BgbiasError(f"{folder} was not prepared for train.resize={resize} (it says {manifest.get('resize')}, "
                          f"enabled={manifest.get('enabled')}); run `dvc repro prepare`")
    if manifest["splits"][split]["samples"] != _identity(samples):
        raise BgbiasError(f"{folder}: the stored {split} images are not the index's; run `dvc repro prepare`")
    return PreparedImageDataset(samples, Path(folder), split, transform)


def pad_collate(items: list[tuple[torch.Tensor, int, int]]):
    """Images of different sizes in one batch: ((uint8 [B, 4, Hmax, Wmax], long [B, 2] sizes), labels, indices)."""
    height = max(x.shape[1] for x, _, _ in items)
    width = max(x.shape[2] for x, _, _ in items)
    batch = torch.zeros(len(items), 4, height, width, dtype=torch.uint8)
    for b, (x, _, _) in enumerate(items):
        batch[b, :, : x.shape[1], : x.shape[2]] = x
    sizes = torch.tensor([[x.shape[1], x.shape[2]] for x, _, _ in items], dtype=torch.long)
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    return (batch, sizes), labels, torch.tensor([i for _, _, i in items], dtype=torch.long)
