"""The real stages, in DVC's order, on a shrunken config."""

import json

from PIL import Image

from bgbias import stages
from bgbias.core.config import load_params
from bgbias.core.layout import Layout
from tests.conftest import write_params


def test_stages_on_tiny_config(tmp_path, assets_dir):
    tiny = {"seed": 1, "data_seed": 1, "synthetic": {"classes": {"train": 2, "val": 2, "test": 2}, "images_per_class": 3,
                                     "image_size": 48}, "backgrounds": {"procedural_per_pool": 2}}
    params, layout = load_params(write_params(tmp_path, tiny)), Layout(tmp_path)

    stages.synthetic(params, layout)
    stages.backgrounds(params, layout)
    stages.index(params, layout)
    stages.masks(params, layout)
    report = stages.mask_quality(params, layout)

    masks = sorted((tmp_path / "outputs" / "masks" / "synthetic").rglob("*.png"))
    assert len(masks) == 18
    assert Image.open(masks[0]).size == (48, 48)
    saved = json.loads((tmp_path / "reports" / "mask_quality.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert {k: v["n"] for k, v in saved["groups"].items()} == {"all": 18, "train": 6, "val": 6, "test": 6}
    assert all(0.0 <= g["mean_iou"] <= 1.0 for g in saved["groups"].values())
    assert json.loads((tmp_path / "reports" / "masks.json").read_text())["failed"] == []

    # A rerun of the masks stage is resumable: nothing is recomputed.
    (masks[0]).unlink()
    stages.masks(params, layout)
    assert len(sorted((tmp_path / "outputs" / "masks" / "synthetic").rglob("*.png"))) == 18


def test_masks_of_changed_images_are_recomputed(tmp_path, assets_dir):
    # A re-rendered dataset keeps its paths: the index's content hashes must make the
    # masks stage redo exactly the masks whose image changed.
    tiny = {"synthetic": {"classes": {"train": 2, "val": 2, "test": 2}, "images_per_class": 2, "image_size": 48}}
    params, layout = load_params(write_params(tmp_path, tiny)), Layout(tmp_path)
    stages.synthetic(params, layout)
    stages.backgrounds(params, layout)
    stages.index(params, layout)
    stages.masks(params, layout)
    masks = {p: p.stat().st_mtime_ns for p in sorted(layout.masks("synthetic").rglob("*.png"))}

    changed = sorted((tmp_path / "outputs" / "synthetic" / "images").rglob("*.png"))[0]
    Image.new("RGB", (48, 48), (0, 0, 0)).save(changed)  # same path, new content
    stages.index(params, layout)
    stages.masks(params, layout)

    redone = [p for p, t in masks.items() if p.stat().st_mtime_ns != t]
    assert [p.relative_to(layout.masks("synthetic")).with_suffix("") for p in redone] == \
        [changed.relative_to(tmp_path / "outputs" / "synthetic" / "images").with_suffix("")]


def _data_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for folder in ("outputs/synthetic", "outputs/backgrounds") for p in sorted((root / folder).rglob("*"))
            if p.is_file()}


def test_seed_is_training_only_and_data_seed_makes_the_data(tmp_path):
    # `seed` must not change the data (else seeds mix data and training variance).
    tiny = {"synthetic": {"classes": {"train": 2, "val": 2, "test": 2}, "images_per_class": 2, "image_size": 40},
            "backgrounds": {"procedural_per_pool": 2}}
    files = {}
    for name, seeds in (("a", {"seed": 0, "data_seed": 0}), ("b", {"seed": 5, "data_seed": 0}),
                        ("c", {"seed": 0, "data_seed": 5})):
        root = tmp_path / name
        root.mkdir()
        params, layout = load_params(write_params(root, {**tiny, **seeds})), Layout(root)
        stages.synthetic(params, layout)
        stages.backgrounds(params, layout)
        files[name] = _data_files(root)
    assert files["a"] == files["b"]
    assert files["a"].keys() == files["c"].keys() and files["a"] != files["c"]
