"""Crafted index files, per dataset format: bad encodings, malformed rows, contradictions
(a path listed twice, or with two labels), mask-name collisions. `bgbias index` refuses each
with one line naming the file and line, and writes nothing; with `index.on_duplicate: drop`
repeated rows are dropped and recorded in the index summary."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.io import savemat

from tests.conftest import make_image
from tests.reliability.conftest import assert_ok, assert_only_changed, assert_refused
from tests.reliability.formats import cars_dataset, csv_dataset, cub_dataset, folder_dataset, sop_dataset


def csv_latin1(root):
    raw = "path,label\nant/0.png,ant\nant/1.png,f\xf6hn\n".encode("latin-1")
    return csv_dataset(root, raw=raw), ["labels.csv:3", "not UTF-8"]


def csv_missing_column(root):
    return csv_dataset(root, raw=b"path,class\nant/0.png,ant\n"), ["labels.csv", "needs columns 'path' and 'label'"]


def csv_short_row(root):
    return csv_dataset(root, ["bee/0.png"]), ["labels.csv:10", "expected path,label"]


def csv_nul_byte(root):
    return csv_dataset(root, ["bee/0.png,b\0ee"]), ["labels.csv"]


def csv_bad_split(root):
    raw = b"path,label,split\nant/0.png,ant,train\nant/1.png,ant,holdout\n"
    cfg = csv_dataset(root, raw=raw)
    del cfg["class_split"]
    return cfg, ["labels.csv:3", "split must be one of"]


def csv_duplicate_row(root):
    return csv_dataset(root, ["ant/0.png,ant"]), ["labels.csv:10", "index.on_duplicate",
                                                  "'ant/0.png' is listed again (first at labels.csv:2)"]


def csv_two_labels(root):
    return csv_dataset(root, ["ant/0.png,dog"]), ["labels.csv:10", "'ant/0.png' is labelled class 4 ('dog')",
                                                  "but class 1 ('ant') at labels.csv:2"]


def csv_same_file_two_spellings(root):
    return csv_dataset(root, ["./ant//0.png,ant"]), ["labels.csv:10", "'ant/0.png' is listed again"]


def csv_mask_collision(root):
    cfg = csv_dataset(root, ["ant/0.jpg,ant"])
    make_image(root / "ant" / "0.jpg", size=(10, 10))
    return cfg, ["labels.csv:10", "'ant/0.jpg' and 'ant/0.png' (labels.csv:2) would share the mask 'ant/0.png'"]


def cub_not_utf8(root):
    cfg = cub_dataset(root)
    (root / "images.txt").write_bytes((root / "images.txt").read_bytes() + b"9 ant/\xff.png\n")
    return cfg, ["images.txt:9", "not UTF-8"]


def cub_short_line(root):
    return cub_dataset(root, ["9"], ["9 1"]), ["images.txt:9", "expected 'image_id path'"]


def cub_bad_label(root):
    return cub_dataset(root, [], ["9 three"]), ["image_class_labels.txt:9", "expected 'image_id class_id'"]


def cub_duplicate_line(root):
    return cub_dataset(root, ["9 ant/0.png"], ["9 1"]), ["images.txt:9", "'images/ant/0.png' is listed again"]


def sop_bad_header(root):
    cfg = sop_dataset(root)
    (root / "Ebay_test.txt").write_text("id class path\n1 4 dog/0.png\n")
    return cfg, ["Ebay_test.txt", "expected header"]


def sop_malformed_row(root):
    return sop_dataset(root, ["7 x 1 ant/0.png"]), ["Ebay_train.txt:8", "malformed row"]


def sop_train_and_test(root):
    return sop_dataset(root, extra_test=["3 4 1 ant/0.png"]), ["Ebay_test.txt:4", "'ant/0.png' is labelled",
                                                               "at Ebay_train.txt:2"]


def cars_not_a_mat(root):
    cfg = cars_dataset(root)
    (root / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    return cfg, ["cars_annos.mat", "cannot read Cars196 annotations"]


def cars_missing_field(root):
    cfg = cars_dataset(root)
    ann = np.zeros(1, dtype=[("relative_im_path", "O")])
    ann[0] = ("car_ims/ant/0.png",)
    savemat(root / "cars_annos.mat", {"annotations": ann[None, :]})
    return cfg, ["cars_annos.mat (annotation 1)", "relative_im_path and class"]


def cars_duplicate(root):
    return cars_dataset(root, [("car_ims/ant/0.png", 1)]), ["cars_annos.mat (annotation 9)", "listed again"]


def folder_not_utf8_name(root):
    cfg = folder_dataset(root)
    make_image(root / os.fsdecode(b"ant/\xff\xfe.png"), size=(10, 10))
    return cfg, ["ant/", "not valid UTF-8"]


CASES = [csv_latin1, csv_missing_column, csv_short_row, csv_nul_byte, csv_bad_split, csv_duplicate_row,
         csv_two_labels, csv_same_file_two_spellings, csv_mask_collision, cub_not_utf8, cub_short_line, cub_bad_label,
         cub_duplicate_line, sop_bad_header, sop_malformed_row, sop_train_and_test, cars_not_a_mat,
         cars_missing_field, cars_duplicate, folder_not_utf8_name]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_crafted_index_file_is_refused(probe, case):
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    dataset, fragments = case(root)
    probe.params(dataset)
    before = probe.snapshot()
    assert_refused(probe.run("index"), *fragments)
    assert_only_changed(before, probe.snapshot())


def test_duplicates_dropped_on_request_are_recorded(probe):
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    dataset = csv_dataset(root, ["ant/0.png,ant", "bee/1.png,dog"])
    probe.params(dataset, index={"workers": 1, "on_duplicate": "drop"})
    before = probe.snapshot()
    result = probe.run("index")
    assert_ok(result)
    assert "dropping" in result.stderr.decode()
    assert_only_changed(before, probe.snapshot(), "project/outputs/index")
    index_csv = (probe.project / "outputs" / "index" / "ds.csv").read_text().splitlines()
    paths = [line.split(",")[0] for line in index_csv[1:]]
    # ant/0.png once; bee/1.png (two labels) not at all, which leaves bee one image: dropped
    assert sorted(paths) == ["ant/0.png", "ant/1.png", "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    summary = json.loads((probe.project / "outputs" / "index" / "ds.json").read_text())
    assert summary["dropped_classes"] == [{"class_id": 2, "class_name": "bee", "images": 1}]
    assert summary["duplicates"] == [
        {"path": "ant/0.png", "labels": ["ant"], "rows": ["labels.csv:2", "labels.csv:10"], "kept": "labels.csv:2"},
        {"path": "bee/1.png", "labels": ["bee", "dog"], "rows": ["labels.csv:5", "labels.csv:11"], "kept": None},
    ]


def test_header_only_index_lists_no_images(probe):
    root = probe.project / "data" / "ds"
    root.mkdir(parents=True)
    probe.params(csv_dataset(root, raw=b"path,label\n"))
    assert_refused(probe.run("index"), "no images listed")
