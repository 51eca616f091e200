"""`bgbias masks`, the stage and folder mode: masks are written only under the output folder
(paths checked after resolving symbolic links), two images never share a mask, OUT_DIR
inside IMAGES_DIR is not masked again, and a PNG the run did not make is not trusted."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_image, object_image
from tests.reliability.conftest import VICTIM_BYTES, assert_ok, assert_only_changed, assert_refused
from tests.reliability.formats import CLASSES, csv_dataset

INDEX_HEADER = "path,class_id,class_name,split,sha1"
MASKS_LOCK = "project/outputs/masks/.ds.lock"  # the stage's lock, beside its folder


def stage_project(probe, rows: list[str]) -> None:
    """A csv dataset and a hand-made index holding `rows` after the valid ones."""
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    probe.params(csv_dataset(root))
    split = {1: "train", 2: "train", 3: "val", 4: "test"}
    valid = [f"{name}/{k}.png,{c},{name},{split[c]}," for c, name in enumerate(CLASSES, start=1) for k in range(2)]
    index = probe.project / "outputs" / "index" / "ds.csv"
    index.parent.mkdir(parents=True)
    index.write_text("\n".join([INDEX_HEADER, *valid, *rows]) + "\n")


@pytest.mark.parametrize("row, fragments", [
    ("{outside}/victim.jpg,3,cat,val,", ["ds.csv:10", "is an absolute path"]),
    ("../../../outside/victim.jpg,3,cat,val,", ["ds.csv:10", "is outside the dataset root"]),
], ids=["absolute", "parent"])
def test_stage_refuses_crafted_index_paths(probe, assets_dir, row, fragments):
    stage_project(probe, [row.format(outside=probe.outside)])
    before = probe.snapshot()
    assert_refused(probe.run("masks"), *fragments)
    assert probe.victim.read_bytes() == VICTIM_BYTES
    assert_only_changed(before, probe.snapshot(), MASKS_LOCK)


def test_stage_refuses_a_mask_folder_linked_outside(probe, assets_dir):
    stage_project(probe, [])
    masks = probe.project / "outputs" / "masks" / "ds"
    masks.mkdir(parents=True)
    (masks / "cat").symlink_to(probe.outside, target_is_directory=True)
    before = probe.snapshot()
    assert_refused(probe.run("masks"), "cat/0.png", "outside the masks folder")
    assert_only_changed(before, probe.snapshot(), MASKS_LOCK)


def test_folder_mode_refuses_an_output_subfolder_linked_outside(probe, assets_dir):
    object_image(probe.tmp / "in" / "sub" / "a.jpg")
    (probe.tmp / "out").mkdir()
    (probe.tmp / "out" / "sub").symlink_to(probe.outside, target_is_directory=True)
    before = probe.snapshot()
    assert_refused(probe.run("masks", str(probe.tmp / "in"), str(probe.tmp / "out"), "--assets-dir", str(assets_dir)),
                   "sub/a.png", "outside the masks folder")
    assert_only_changed(before, probe.snapshot())


@pytest.mark.parametrize("out", ["in", "in/.."], ids=["same", "images_inside_out"])
def test_folder_mode_refuses_out_dir_holding_the_images(probe, assets_dir, out):
    object_image(probe.tmp / "in" / "a.jpg")
    before = probe.snapshot()
    assert_refused(probe.run("masks", str(probe.tmp / "in"), str(probe.tmp / out), "--assets-dir", str(assets_dir)),
                   "OUT_DIR", "must not contain IMAGES_DIR")
    assert_only_changed(before, probe.snapshot())


def test_folder_mode_skips_its_own_output_inside_the_images(probe, assets_dir):
    images, out = probe.tmp / "in", probe.tmp / "in" / "masks"
    object_image(images / "a.jpg")
    object_image(images / "b" / "c.png", seed=1)
    before = probe.snapshot()
    for _ in range(2):
        result = probe.run("masks", str(images), str(out), "--assets-dir", str(assets_dir))
        assert_ok(result)
    assert result.stdout.decode().startswith("0 masks written, 2 already present")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "b/c.png"]
    assert_only_changed(before, probe.snapshot(), "in/masks")


def test_folder_mode_refuses_two_images_sharing_a_mask(probe, assets_dir):
    object_image(probe.tmp / "in" / "a" / "x.jpg")
    object_image(probe.tmp / "in" / "a" / "x.png", seed=1)
    before = probe.snapshot()
    assert_refused(probe.run("masks", str(probe.tmp / "in"), str(probe.tmp / "out"), "--assets-dir", str(assets_dir)),
                   "a/x.jpg", "a/x.png", "would share the mask 'a/x.png'")
    assert_only_changed(before, probe.snapshot())


def test_png_the_run_did_not_make_is_not_trusted(probe, assets_dir):
    """An image that cannot be masked records no mask; a PNG put at its mask path later is
    not taken for its mask: the next run still reports the image as failed."""
    images, out = probe.tmp / "in", probe.tmp / "out"
    object_image(images / "good.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = ("masks", str(images), str(out), "--assets-dir", str(assets_dir))
    first = probe.run(*args)
    assert first.returncode == 1 and "failed: " in first.stderr.decode()
    Image.new("L", (48, 48), 255).save(out / "broken.png")
    Image.new("L", (48, 48), 255).save(out / "stray.png")  # no image: a run leaves it alone
    second = probe.run(*args)
    assert second.returncode == 1 and "broken.jpg" in second.stderr.decode(), second.stderr
    assert second.stdout.decode().startswith("0 masks written, 1 already present, 1 failed")
    assert not (out / "broken.png").exists()


def test_png_without_a_record_is_recomputed(probe, assets_dir):
    images, out = probe.tmp / "in", probe.tmp / "out"
    object_image(images / "a.png")
    make_image(out / "a.png", size=(48, 48), color=0, mode="L")  # no source_hashes.json entry
    result = probe.run("masks", str(images), str(out), "--assets-dir", str(assets_dir))
    assert_ok(result)
    assert result.stdout.decode().startswith("1 masks written, 0 already present")
    assert np.asarray(Image.open(out / "a.png")).max() > 128  # u2netp's mask, not the planted black one


def test_folder_mode_masks_a_file_name_that_is_not_utf8(probe, assets_dir):
    images, out = probe.tmp / "in", probe.tmp / "out"
    object_image(images / os.fsdecode(b"\xff.png"))
    assert_ok(probe.run("masks", str(images), str(out), "--assets-dir", str(assets_dir)))
    assert (out / os.fsdecode(b"\xff.png")).is_file()
