"""Tiny valid datasets in each format (2 train, 1 val, 1 test class x 2 images), written as
text so a probe can change one line. Each writer returns the `datasets.ds` params entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import savemat

from tests.conftest import make_image

SPLIT = {"train": {"first": 1, "last": 2}, "val": {"first": 3, "last": 3}, "test": {"first": 4, "last": 4}}
CLASSES = ["ant", "bee", "cat", "dog"]


def images(root: Path, prefix: str = "") -> list[tuple[str, int, str]]:
    """(relative path, 1-based class id, class name) of 8 small images written under root."""
    out = []
    for c, name in enumerate(CLASSES, start=1):
        for k in range(2):
            rel = f"{prefix}{name}/{k}.png"
            make_image(root / rel, size=(10, 10), color=(40 * c, 20 * k, 90))
            out.append((rel, c, name))
    return out


def csv_dataset(root: Path, extra_rows: list[str] = (), raw: bytes | None = None) -> dict:
    rows = ["path,label"] + [f"{rel},{name}" for rel, _, name in images(root)] + list(extra_rows)
    (root / "labels.csv").write_bytes(raw if raw is not None else ("\n".join(rows) + "\n").encode())
    return {"format": "csv", "root": str(root), "class_split": SPLIT}


def cub_dataset(root: Path, extra_images: list[str] = (), extra_labels: list[str] = ()) -> dict:
    listed = images(root / "images")
    (root / "images.txt").write_text(
        "\n".join([f"{i} {rel}" for i, (rel, _, _) in enumerate(listed, start=1)] + list(extra_images)) + "\n")
    (root / "image_class_labels.txt").write_text(
        "\n".join([f"{i} {c}" for i, (_, c, _) in enumerate(listed, start=1)] + list(extra_labels)) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{c} {n}" for c, n in enumerate(CLASSES, start=1)) + "\n")
    return {"format": "cub200", "root": str(root), "class_split": SPLIT}


SOP_HEADER = "image_id class_id super_class_id path"


def sop_dataset(root: Path, extra_train: list[str] = (), extra_test: list[str] = ()) -> dict:
    listed = images(root)
    train = [f"{i} {c} 1 {rel}" for i, (rel, c, _) in enumerate(listed[:6], start=1)]
    test = [f"{i} {c} 1 {rel}" for i, (rel, c, _) in enumerate(listed[6:], start=1)]
    (root / "Ebay_train.txt").write_text("\n".join([SOP_HEADER, *train, *extra_train]) + "\n")
    (root / "Ebay_test.txt").write_text("\n".join([SOP_HEADER, *test, *extra_test]) + "\n")
    return {"format": "sop", "root": str(root), "class_split": {"train": {"first": 1, "last": 2},
                                                               "val": {"first": 3, "last": 3}}}


def cars_dataset(root: Path, extra: list[tuple[str, int]] = ()) -> dict:
    listed = [(rel, c) for rel, c, _ in images(root, prefix="car_ims/")] + list(extra)
    ann = np.zeros(len(listed), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    for i, (rel, c) in enumerate(listed):
        ann[i] = (rel, np.uint8(c), np.uint8(0))
    savemat(root / "cars_annos.mat", {"annotations": ann[None, :],
                                      "class_names": np.array(CLASSES, dtype=object)[None, :]})
    return {"format": "cars196", "root": str(root), "class_split": SPLIT}


def folder_dataset(root: Path) -> dict:
    images(root)
    return {"format": "folder", "root": str(root), "class_split": SPLIT}
