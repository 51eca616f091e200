"""Odd image kinds: every decodable kind is indexed and masked at its display size; every
broken kind is skipped by the index (listed in its summary, or one `error:` line with
`index.on_corrupt_image: fail`) and reported, never masked, by `bgbias masks`."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
from PIL import Image

from tests.reliability.conftest import assert_ok, assert_only_changed, assert_refused


def _exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 20 x 12 stored, 12 x 20 shown
    Image.new("RGB", (20, 12), (200, 40, 40)).save(path, exif=exif)


def _bomb(path):
    """A valid PNG header claiming 20000 x 20000 pixels (over PIL's decompression-bomb limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def _animated(path):
    frames = [Image.new("P", (14, 10), i) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


DECODABLE = {  # file name: (writer, displayed size)
    "gray.png": (lambda p: Image.new("L", (16, 10), 90).save(p), (16, 10)),
    "palette.png": (lambda p: Image.new("P", (16, 10), 3).save(p), (16, 10)),
    "bits16.png": (lambda p: Image.fromarray(np.arange(160, dtype=np.uint16).reshape(10, 16) * 400).save(p), (16, 10)),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (16, 10), (0, 255, 255, 0)).save(p), (16, 10)),
    "rgba.png": (lambda p: Image.new("RGBA", (16, 10), (10, 200, 10, 0)).save(p), (16, 10)),
    "bilevel.bmp": (lambda p: Image.new("1", (16, 10), 1).save(p), (16, 10)),
    "tiny.png": (lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p), (1, 1)),
    "exif_rotated.jpg": (_exif_rotated, (12, 20)),
    "animated.gif": (_animated, (14, 10)),
    "float.tif": (lambda p: Image.fromarray(np.linspace(0, 1, 160, dtype=np.float32).reshape(10, 16)).save(p),
                  (16, 10)),
}
BROKEN = {
    "truncated.jpg": lambda p: (Image.new("RGB", (64, 64), (9, 9, 9)).save(p), p.write_bytes(p.read_bytes()[:60])),
    "empty.png": lambda p: p.write_bytes(b""),
    "text.jpg": lambda p: p.write_text("not an image"),
    "bomb.png": _bomb,
}


def odd_images(folder) -> None:
    for name, (write, _) in DECODABLE.items():
        (folder / "odd").mkdir(parents=True, exist_ok=True)
        write(folder / "odd" / name)
    for name, write in BROKEN.items():
        write(folder / "odd" / name)
    (folder / "plain").mkdir()
    for k in range(2):
        Image.new("RGB", (16, 10), (30 * k, 60, 90)).save(folder / "plain" / f"{k}.png")


def dataset(probe):
    root = probe.project / "data" / "ds"
    odd_images(root)
    return {"format": "folder", "root": str(root),
            "class_split": {"train": {"first": 1, "last": 1}, "val": {"first": 2, "last": 2}}}


def test_index_takes_every_decodable_kind_and_lists_the_broken(probe):
    probe.params(dataset(probe))
    before = probe.snapshot()
    assert_ok(probe.run("index"))
    assert_only_changed(before, probe.snapshot(), "project/outputs/index")
    listed = [line.split(",")[0] for line in (probe.project / "outputs/index/ds.csv").read_text().splitlines()[1:]]
    assert sorted(listed) == sorted([f"odd/{n}" for n in DECODABLE] + ["plain/0.png", "plain/1.png"])
    skipped = json.loads((probe.project / "outputs/index/ds.json").read_text())["skipped_images"]
    assert sorted(s["path"] for s in skipped) == sorted(f"odd/{n}" for n in BROKEN)


def test_index_fails_on_the_first_broken_image_on_request(probe):
    probe.params(dataset(probe), index={"workers": 1, "on_corrupt_image": "fail"})
    before = probe.snapshot()
    assert_refused(probe.run("index"), "cannot decode image", "odd/bomb.png", "index.on_corrupt_image: skip")
    assert_only_changed(before, probe.snapshot())


def test_masks_of_every_kind_at_display_size(probe, assets_dir):
    images, out = probe.tmp / "in", probe.tmp / "out"
    odd_images(images)
    before = probe.snapshot()
    result = probe.run("masks", str(images), str(out), "--assets-dir", str(assets_dir))
    assert_only_changed(before, probe.snapshot(), "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr.decode()
    failed = sorted(line.split()[1].rsplit("/", 1)[-1] for line in result.stderr.decode().splitlines()
                    if line.startswith("failed: "))
    assert failed == sorted(BROKEN)
    for name, (_, size) in DECODABLE.items():
        mask = Image.open((out / "odd" / name).with_suffix(".png"))
        assert (mask.mode, mask.size) == ("L", size), name
    assert not any((out / "odd" / name).with_suffix(".png").exists() for name in BROKEN)
