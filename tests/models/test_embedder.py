"""create_model: registry, offline weights, frozen BatchNorm, clear errors."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from bgbias.core.config import ModelConfig
from bgbias.core.errors import BgbiasError
from bgbias.models import create_model
from bgbias.models.backbones import BACKBONES
from tests.conftest import ASSETS

needs_weights = pytest.mark.skipif(not (ASSETS / "efficientnet-lite0-57934424.pth").is_file(),
                                   reason="EfficientNet-Lite0 weights not fetched: run `make setup`")


def _bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules() if isinstance(m, _BatchNorm)]


def _train_step(model):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.rand(4, 3, 32, 32))
    out.pow(2).mean().backward()
    optimizer.step()
    return out


@needs_weights
@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_batchnorm_keeps_its_running_stats(freeze):
    model = create_model(ModelConfig(freeze_bn=freeze), ASSETS)
    before = _bn_stats(model)
    out = _train_step(model)
    assert out.shape == (4, 128)
    changed = [not (torch.equal(a, c) and torch.equal(b, d)) for (a, b), (c, d) in zip(before, _bn_stats(model))]
    assert len(before) == 49
    assert not any(changed) if freeze else all(changed)
    assert model.training  # the model is in train mode; only its BN layers are in eval mode


@needs_weights
def test_efficientnet_gets_the_offline_imagenet_weights():
    model = create_model(ModelConfig(embedding_dim=64), ASSETS)
    asset = torch.load(ASSETS / "efficientnet-lite0-57934424.pth", weights_only=True)
    assert torch.equal(model.trunk.model.conv_stem.weight, asset["_conv_stem.weight"])
    groups = model.parameter_groups(1e-5, 1e-4)
    assert [g["name"] for g in groups] == ["trunk", "embedding"] and groups[1]["lr"] == 1e-4
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def _bninception_state() -> dict:
    from bgbias.models.bninception import BNInception

    return BNInception().state_dict()


def test_registry_names_the_three_backbones():
    assert list(BACKBONES) == ["efficientnet_lite0", "bninception", "resnet50"]


def test_bninception_without_weights_says_what_to_do():
    with pytest.raises(BgbiasError, match="model.weights"):
        create_model(ModelConfig(backbone="bninception"), ASSETS)


def test_bninception_loads_a_weights_file_with_its_classifier(tmp_path):
    from bgbias.models.bninception import BNInception

    state = BNInception().state_dict()
    state["last_linear.weight"] = torch.zeros(1000, 1024)  # the original file's classifier is dropped
    torch.save(state, tmp_path / "bn.pth")
    model = create_model(ModelConfig(backbone="bninception", weights=tmp_path / "bn.pth", embedding_dim=16), ASSETS)
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 16)


def test_a_checkpoint_loads_without_the_imagenet_weights_file(tmp_path):
    # Trained bninception weights, e.g. copied to a machine without bn_inception-52deb4733.pth.
    torch.save(_bninception_state(), tmp_path / "bn.pth")
    cfg = ModelConfig(backbone="bninception", weights=tmp_path / "bn.pth", embedding_dim=16)
    trained = create_model(cfg, ASSETS)
    (tmp_path / "bn.pth").unlink()
    with pytest.raises(BgbiasError, match="weights file not found"):
        create_model(cfg, ASSETS)
    rebuilt = create_model(cfg, ASSETS, pretrained=False)
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.rand(2, 3, 224, 224)
    assert torch.equal(rebuilt.eval()(x), trained.eval()(x))


@needs_weights
def test_efficientnet_without_pretrained_skips_the_asset():
    pretrained = create_model(ModelConfig(), ASSETS).state_dict()
    bare = create_model(ModelConfig(), ASSETS, pretrained=False).state_dict()
    stem = next(k for k in pretrained if k.endswith("conv_stem.weight"))
    assert not torch.equal(pretrained[stem], bare[stem])


def test_resnet50_without_weights_warns_and_a_wrong_file_fails(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        model = create_model(ModelConfig(backbone="resnet50", embedding_dim=8), ASSETS)
    assert "random weights" in caplog.text and model.embedding.in_features == 2048
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(BgbiasError, match="not torchvision ResNet-50 weights"):
        create_model(ModelConfig(backbone="resnet50", weights=tmp_path / "wrong.pth"), ASSETS)
    with pytest.raises(BgbiasError, match="weights file not found"):
        create_model(ModelConfig(backbone="resnet50", weights=tmp_path / "missing.pth"), ASSETS)
