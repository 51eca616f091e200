"""Shared fixtures: tiny images made on the fly; the repo's offline u2netp model when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
