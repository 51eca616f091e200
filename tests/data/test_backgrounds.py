import hashlib

import pytest
from PIL import Image

from bgbias.core.config import BackgroundsConfig
from bgbias.data.backgrounds import build_pools
from bgbias.core.errors import BgbiasError
from tests.conftest import make_image


def test_folder_source_pools_and_shrink(tmp_path):
    make_image(tmp_path / "src" / "val" / "a.jpg", size=(400, 200), color=(1, 2, 3))
    make_image(tmp_path / "src" / "val" / "b.png", size=(50, 60), color=(9, 9, 9))
    make_image(tmp_path / "src" / "test" / "c.jpg", size=(100, 300), color=(200, 0, 0))
    cfg = BackgroundsConfig(source=str(tmp_path / "src"), max_side=100)
    manifest = build_pools(cfg, tmp_path / "out", seed=0)
    assert [e["source"] for e in manifest["pools"]["train"]] == ["a.jpg", "b.png"]
    assert [e["source"] for e in manifest["pools"]["test"]] == ["c.jpg"]
    assert Image.open(tmp_path / "out" / "train" / "0000.jpg").size == (100, 50)
    assert Image.open(tmp_path / "out" / "train" / "0001.jpg").size == (50, 60)  # never enlarged
    assert Image.open(tmp_path / "out" / "test" / "0000.jpg").size == (33, 100)


def test_same_photo_in_both_pools_rejected(tmp_path):
    make_image(tmp_path / "src" / "val" / "a.png", color=(5, 5, 5))
    make_image(tmp_path / "src" / "test" / "copy.png", color=(5, 5, 5))
    with pytest.raises(BgbiasError, match="same photo is in both pools"):
        build_pools(BackgroundsConfig(source=str(tmp_path / "src")), tmp_path / "out", seed=0)


def test_missing_pool_folder(tmp_path):
    make_image(tmp_path / "src" / "val" / "a.png")
    with pytest.raises(BgbiasError, match=r"folder for the test pool not found"):
        build_pools(BackgroundsConfig(source=str(tmp_path / "src")), tmp_path / "out", seed=0)


def test_corrupt_photo_skipped_and_listed(tmp_path):
    make_image(tmp_path / "src" / "val" / "ok.png")
    (tmp_path / "src" / "val" / "bad.jpg").write_bytes(b"nope")
    make_image(tmp_path / "src" / "test" / "t.png", color=(0, 0, 1))
    manifest = build_pools(BackgroundsConfig(source=str(tmp_path / "src")), tmp_path / "out", seed=0)
    assert [s["path"].rsplit("/", 1)[-1] for s in manifest["skipped"]] == ["bad.jpg"]
    assert len(manifest["pools"]["train"]) == 1


def test_bundled_pools_disjoint(tmp_path):
    manifest = build_pools(BackgroundsConfig(procedural_per_pool=3), tmp_path, seed=0)
    assert len(manifest["pools"]["train"]) == 3 + 3 and len(manifest["pools"]["test"]) == 2 + 3
    hashes = {pool: {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / pool).iterdir()}
              for pool in ("train", "test")}
    assert not hashes["train"] & hashes["test"]
