"""Each loader on a tiny fixture in its official format; split sizes and labels by hand."""

from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from bgbias.core.config import ClassRange, ClassSplit, DatasetConfig, IndexConfig
from bgbias.data.datasets import DatasetIndex, build_index
from bgbias.core.errors import BgbiasError
from tests.conftest import make_image


def split(train, val, test=None) -> ClassSplit:
    rng = lambda r: None if r is None else ClassRange(first=r[0], last=r[1])  # noqa: E731
    return ClassSplit(train=rng(train), val=rng(val), test=rng(test))


def counts(index: DatasetIndex) -> dict:
    return {name: (len(index.split(name)), sorted({s.class_id for s in index.split(name)})) for name in
            ("train", "val", "test")}


POLICY = IndexConfig(workers=1)


def test_cars196(tmp_path):
    # 4 classes x 2 images; classes 1-2 train, 3 val, 4 test.
    paths = [f"car_ims/{i:06d}.jpg" for i in range(1, 9)]
    for p in paths:
        make_image(tmp_path / p)
    ann = np.zeros(8, dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    for i, p in enumerate(paths):
        ann[i] = (p, np.uint8(i // 2 + 1), np.uint8(i % 2))
    savemat(tmp_path / "cars_annos.mat", {"annotations": ann[None, :],
                                          "class_names": np.array(["A", "B", "C", "D"], dtype=object)[None, :]})
    cfg = DatasetConfig(format="cars196", root=tmp_path, class_split=split((1, 2), (3, 3), (4, 4)))
    index = build_index(cfg, POLICY, "cars")
    assert counts(index) == {"train": (4, [1, 2]), "val": (2, [3]), "test": (2, [4])}
    assert index.samples[0].path == "car_ims/000001.jpg" and index.samples[0].class_name == "A"


def write_cub(root: Path, per_class: list[int]) -> None:
    images, labels, classes, i = [], [], [], 0
    for c, n in enumerate(per_class, start=1):
        classes.append(f"{c} {c:03d}.Bird_{c}")
        for k in range(n):
            i += 1
            rel = f"{c:03d}.Bird_{c}/img_{k}.jpg"
            make_image(root / "images" / rel)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")


def test_cub200_with_custom_split(tmp_path):
    write_cub(tmp_path, [3, 2, 2, 4, 2])
    cfg = DatasetConfig(format="cub200", root=tmp_path, class_split=split((1, 2), (3, 3), (4, 5)))
    index = build_index(cfg, POLICY, "cub")
    assert counts(index) == {"train": (5, [1, 2]), "val": (2, [3]), "test": (6, [4, 5])}
    assert index.split("val")[0].class_name == "003.Bird_3"
    assert index.split("val")[0].path == "images/003.Bird_3/img_0.jpg"


def test_cub200_paper_split_is_default():
    cfg = DatasetConfig(format="cub200", root=Path("/x"))
    s = cfg.effective_split()
    assert (s.split_of(75), s.split_of(76), s.split_of(100), s.split_of(101), s.split_of(200)) == (
        "train", "val", "val", "test", "test")


def test_sop(tmp_path):
    header = "image_id class_id super_class_id path"
    train_rows, test_rows = [header], [header]
    for i, c in enumerate([1, 1, 2, 2, 3, 3, 3], start=1):
        rel = f"bike_final/{c}_{i}.JPG"
        make_image(tmp_path / rel)
        train_rows.append(f"{i} {c} 1 {rel}")
    for i, c in enumerate([4, 4, 5, 5], start=1):
        rel = f"chair_final/{c}_{i}.JPG"
        make_image(tmp_path / rel)
        test_rows.append(f"{i} {c} 2 {rel}")
    (tmp_path / "Ebay_train.txt").write_text("\n".join(train_rows) + "\n")
    (tmp_path / "Ebay_test.txt").write_text("\n".join(test_rows) + "\n")
    cfg = DatasetConfig(format="sop", root=tmp_path, class_split=split((1, 2), (3, 3)))
    index = build_index(cfg, POLICY, "sop")
    assert counts(index) == {"train": (4, [1, 2]), "val": (3, [3]), "test": (4, [4, 5])}


def test_folder_ranks_class_names_naturally(tmp_path):
    for name, n in (("class10", 2), ("class2", 3), ("class1", 2)):
        for k in range(n):
            make_image(tmp_path / name / f"{k}.png")
    make_image(tmp_path / "stray.png")  # directly in root: no class, ignored
    cfg = DatasetConfig(format="folder", root=tmp_path, class_split=split((1, 1), (2, 2), (3, 3)))
    index = build_index(cfg, POLICY, "mine")
    assert [(s.class_name, s.class_id, s.split) for s in index.samples if s.path.endswith("0.png")] == [
        ("class1", 1, "train"), ("class10", 3, "test"), ("class2", 2, "val")]
    assert counts(index)["val"] == (3, [2])


def test_folder_without_split_is_an_error(tmp_path):
    make_image(tmp_path / "a" / "0.png")
    with pytest.raises(BgbiasError, match="datasets.mine.class_split is required"):
        build_index(DatasetConfig(format="folder", root=tmp_path), POLICY, "mine")


def test_csv_split_column_and_override(tmp_path):
    rows = ["path,label,split"]
    for label, sp in (("cat", "train"), ("dog", "val"), ("emu", "test")):
        for k in range(2):
            make_image(tmp_path / f"{label}{k}.png")
            rows.append(f"{label}{k}.png,{label},{sp}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    index = build_index(DatasetConfig(format="csv", root=tmp_path), POLICY, "c")
    assert counts(index) == {"train": (2, [1]), "val": (2, [2]), "test": (2, [3])}
    overridden = build_index(DatasetConfig(format="csv", root=tmp_path, class_split=split((1, 2), (3, 3))), POLICY, "c")
    assert counts(overridden) == {"train": (4, [1, 2]), "val": (2, [3]), "test": (0, [])}


def test_csv_class_in_two_splits(tmp_path):
    for k in range(2):
        make_image(tmp_path / f"{k}.png")
    (tmp_path / "labels.csv").write_text("path,label,split\n0.png,a,train\n1.png,a,test\n")
    with pytest.raises(BgbiasError, match="appears in several splits"):
        build_index(DatasetConfig(format="csv", root=tmp_path), POLICY, "c")


def test_index_roundtrip(tmp_path):
    write_cub(tmp_path / "cub", [2, 2])
    cfg = DatasetConfig(format="cub200", root=tmp_path / "cub", class_split=split((1, 1), (2, 2)))
    index = build_index(cfg, POLICY, "cub")
    index.write(tmp_path / "idx" / "cub.csv")
    again = DatasetIndex.read(tmp_path / "idx" / "cub.csv", cfg.root)
    assert again.samples == index.samples
    assert (tmp_path / "idx" / "cub.json").is_file()


# ---- bad inputs ----------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(BgbiasError, match=r"datasets.cub.root not found: .*nowhere"):
        build_index(DatasetConfig(format="cub200", root=tmp_path / "nowhere"), POLICY, "cub")


def test_missing_index_file_is_named(tmp_path):
    with pytest.raises(BgbiasError, match=r"missing CUB index file: .*images.txt"):
        build_index(DatasetConfig(format="cub200", root=tmp_path), POLICY, "cub")
    with pytest.raises(BgbiasError, match=r"missing Cars196 annotation file: .*cars_annos.mat"):
        build_index(DatasetConfig(format="cars196", root=tmp_path), POLICY, "cars")
    with pytest.raises(BgbiasError, match=r"missing SOP index file: .*Ebay_train.txt"):
        build_index(DatasetConfig(format="sop", root=tmp_path), POLICY, "sop")


def test_listed_image_not_found(tmp_path):
    write_cub(tmp_path, [2, 2])
    (tmp_path / "images" / "002.Bird_2" / "img_1.jpg").unlink()
    cfg = DatasetConfig(format="cub200", root=tmp_path, class_split=split((1, 1), (2, 2)))
    with pytest.raises(BgbiasError, match=r"image listed but not found: .*002.Bird_2/img_1.jpg"):
        build_index(cfg, POLICY, "cub")


def test_small_class_dropped_or_fails(tmp_path):
    write_cub(tmp_path, [3, 1, 2])
    cfg = DatasetConfig(format="cub200", root=tmp_path, class_split=split((1, 2), (3, 3)))
    index = build_index(cfg, POLICY, "cub")
    assert index.dropped_classes == [{"class_id": 2, "class_name": "002.Bird_2", "images": 1}]
    assert counts(index)["train"] == (3, [1])
    with pytest.raises(BgbiasError, match="class '002.Bird_2' has 1 image"):
        build_index(cfg, IndexConfig(workers=1, on_small_class="fail"), "cub")


def test_corrupt_image_skipped_or_fails(tmp_path):
    write_cub(tmp_path, [3, 2])
    bad = tmp_path / "images" / "001.Bird_1" / "img_2.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    cfg = DatasetConfig(format="cub200", root=tmp_path, class_split=split((1, 1), (2, 2)))
    index = build_index(cfg, POLICY, "cub")
    assert [s["path"] for s in index.skipped_images] == ["images/001.Bird_1/img_2.jpg"]
    assert counts(index)["train"] == (2, [1])
    with pytest.raises(BgbiasError, match=r"cannot decode image .*img_2.jpg"):
        build_index(cfg, IndexConfig(workers=1, on_corrupt_image="fail"), "cub")


def test_corrupt_images_found_by_parallel_check(tmp_path):
    write_cub(tmp_path, [40, 40])
    (tmp_path / "images" / "002.Bird_2" / "img_7.jpg").write_bytes(b"\x00garbage")
    cfg = DatasetConfig(format="cub200", root=tmp_path, class_split=split((1, 1), (2, 2)))
    index = build_index(cfg, IndexConfig(workers=2), "cub")
    assert [s["path"] for s in index.skipped_images] == ["images/002.Bird_2/img_7.jpg"]
    assert len(index.samples) == 79
