import pytest

from bgbias.core.assets import ASSETS, asset_path, sha256_of
from bgbias.core.errors import BgbiasError


def test_missing_asset_says_what_to_run(tmp_path):
    with pytest.raises(BgbiasError, match="make setup"):
        asset_path("u2netp", tmp_path)


def test_altered_asset_is_rejected(tmp_path):
    (tmp_path / "u2netp.onnx").write_bytes(b"not a model")
    with pytest.raises(BgbiasError, match="checksum mismatch"):
        asset_path("u2netp", tmp_path)


def test_unknown_asset(tmp_path):
    with pytest.raises(BgbiasError, match="unknown asset"):
        asset_path("bert", tmp_path)


def test_fetched_assets_verify(assets_dir):
    for name, asset in ASSETS.items():
        path = asset_path(name, assets_dir)
        assert sha256_of(path) == asset.sha256
