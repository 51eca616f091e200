"""A tiny paper-grid project: two tiny datasets in two of the official formats (CUB-200 and
SOP layouts of rendered synthetic photos), two background pools of photos, and a
pipelines/paper/params.yaml sized for seconds per cell (1 epoch x 1 iteration, 32 px)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bgbias.core.config import SyntheticConfig
from bgbias.data.synthetic import generate
from tests.conftest import ASSETS, REPO


def _rendered(tmp: Path) -> list[tuple[str, str]]:
    """(relative path, class name) of 6 classes x 3 images, 40 px, under tmp/images."""
    if not (tmp / "images" / "labels.csv").is_file():
        generate(SyntheticConfig(classes={"train": 2, "val": 2, "test": 2}, images_per_class=3, image_size=40,
                                 workers=1), 4, tmp)
    with open(tmp / "images" / "labels.csv", newline="") as f:
        return [(row["path"], row["label"]) for row in csv.DictReader(f)]


def write_cub(root: Path, rendered: Path) -> None:
    rows = _rendered(rendered)
    classes = list(dict.fromkeys(c for _, c in rows))
    for rel, _ in rows:
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rendered / "images" / rel, root / "images" / rel)
    (root / "images.txt").write_text("".join(f"{i} {rel}\n" for i, (rel, _) in enumerate(rows, 1)))
    (root / "image_class_labels.txt").write_text(
        "".join(f"{i} {classes.index(c) + 1}\n" for i, (_, c) in enumerate(rows, 1)))
    (root / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))


def write_sop(root: Path, rendered: Path) -> None:
    rows = _rendered(rendered)
    classes = list(dict.fromkeys(c for _, c in rows))
    header = "image_id class_id super_class_id path"
    train, test = [header], [header]
    for i, (rel, c) in enumerate(rows, 1):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rendered / "images" / rel, root / rel)
        k = classes.index(c) + 1
        (train if k <= 4 else test).append(f"{i} {k} 1 {rel}")
    (root / "Ebay_train.txt").write_text("\n".join(train) + "\n")
    (root / "Ebay_test.txt").write_text("\n".join(test) + "\n")


def _photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)).save(path)


SPLIT = {"train": {"first": 1, "last": 2}, "val": {"first": 3, "last": 4}, "test": {"first": 5, "last": 6}}


def grid_params(datasets: list[str], losses: list[str], modes: list[str]) -> dict:
    return {
        "dataset": datasets[0], "loss": losses[0], "seed": 1, "data_seed": 2, "assets_dir": str(ASSETS),
        "paper": {"datasets": datasets, "losses": losses, "modes": modes, "backbone": "auto", "storage": None,
                  "cluster": {"cpus_per_cell": 2, "gpus_per_cell": 0, "cpus_per_prepare": 1, "max_retries": 2}},
        "datasets": {"cub": {"format": "cub200", "root": "../outside/cub", "class_split": SPLIT},
                     "sop": {"format": "sop", "root": "../outside/sop",
                             "class_split": {"train": SPLIT["train"], "val": SPLIT["val"]}}},
        "index": {"workers": 1},
        "backgrounds": {"source": "../outside/photos", "procedural_per_pool": 1},
        "masks": {"workers": 1},
        "prepare": {"enabled": False},
        "model": {"weights": None},
        "loss_params": {"source": "paper"},
        "tracking": {"uri": None},
        "train": {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 4, "m_per_class": 2, "lr": 1e-4,
                  "resize": 40, "crop": 32, "eval_batch_size": 16, "device": "cpu", "workers": None},
        "eval": {"replaced_draws": 2},
        "attribution": {"images": 2, "batch_size": 2, "noisy_copies": 2, "figure_rows": 2},
    }


def make_grid_project(tmp: Path, datasets=("cub", "sop"), losses=("triplet", "multi_similarity"),
                      modes=("base", "bgaugment")) -> Path:
    """tmp/project (a DVC project with the paper pipeline) beside tmp/outside (the data)."""
    from dvc.repo import Repo

    outside, root = tmp / "outside", tmp / "project"
    write_cub(outside / "cub", tmp / "rendered")
    write_sop(outside / "sop", tmp / "rendered")
    for pool in ("val", "test"):
        for i in range(2):
            _photo(outside / "photos" / pool / f"{i}.jpg", seed=10 * len(pool) + i)
    write_grid_params(root, grid_params(list(datasets), list(losses), list(modes)))
    shutil.copy(REPO / "pipelines" / "paper" / "dvc.yaml", root / "pipelines" / "paper")
    Repo.init(str(root), no_scm=True)
    return root


def write_grid_params(root: Path, params: dict) -> Path:
    path = root / "pipelines" / "paper" / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
