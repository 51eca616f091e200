"""Shared fixtures: tiny images made on the fly; the repo's offline assets when present;
a tiny project with everything training needs (synthetic images, background pools, an
index, and the synthetic set's exact masks standing in for u2netp's, which the masks
tests cover)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bgbias import stages
from bgbias.core.config import load_params
from bgbias.core.layout import Layout

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "data" / "assets"


@pytest.fixture
def assets_dir() -> Path:
    if not (ASSETS / "u2netp.onnx").is_file():
        pytest.skip("u2netp.onnx not fetched: run `make setup`")
    return ASSETS


def make_image(path: Path, size=(8, 8), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def object_image(path: Path, size: int = 48, seed: int = 0) -> Path:
    """A coloured disc on a textured background: something u2netp finds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    arr = rng.integers(0, 80, size=(size, size, 3)).astype(np.uint8)
    arr[disc] = (230, 40, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


TINY_TRAIN = {
    "dataset": "synthetic",
    "loss": "multi_similarity",
    "seed": 3,
    "data_seed": 3,
    "datasets": {"synthetic": {"format": "csv", "root": "outputs/synthetic/images",
                               "gt_masks": "outputs/synthetic/masks"}},
    "synthetic": {"classes": {"train": 4, "val": 3, "test": 3}, "images_per_class": 4, "image_size": 40,
                  "workers": 1},
    "backgrounds": {"procedural_per_pool": 3},
    "index": {"workers": 1},
    "train": {"epochs": 3, "iterations_per_epoch": 2, "batch_size": 8, "m_per_class": 2, "lr": 1e-4,
              "resize": 40, "crop": 32, "eval_batch_size": 16},
}


def write_params(root: Path, overrides: dict | None = None) -> Path:
    raw = {**TINY_TRAIN, "assets_dir": str(ASSETS)}
    for key, value in (overrides or {}).items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    if not (ASSETS / "efficientnet-lite0-57934424.pth").is_file():
        pytest.skip("EfficientNet-Lite0 weights not fetched: run `make setup`")
    root = tmp_path_factory.mktemp("tiny_data")
    params, layout = load_params(write_params(root)), Layout(root)
    stages.synthetic(params, layout)
    stages.backgrounds(params, layout)
    stages.index(params, layout)
    shutil.copytree(layout.synthetic / "masks", layout.masks("synthetic"))
    return root


@pytest.fixture
def tiny_project(prepared_data, tmp_path) -> Path:
    """A fresh copy per test (training writes checkpoints and reports into it)."""
    root = tmp_path / "project"
    shutil.copytree(prepared_data, root)
    return root
