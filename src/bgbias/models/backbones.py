"""Explicit backbone registry. A backbone is a trunk that maps a normalised image batch to
a feature map, its channel count, and the input normalisation its weights expect.

Weights never come from a hub: EfficientNet-Lite0 from the offline asset (`make setup`),
BN-Inception and ResNet-50 from a file the user names in `model.weights`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bgbias.models.checkpoint import safe_load
from bgbias.core.errors import BgbiasError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """RGB in [0, 1] -> (x - mean) / std, per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureMap(nn.Module):
    """Calls a timm model's `forward_features`: [B, 3, H, W] -> [B, C, h, w]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@dataclass
class Backbone:
    trunk: nn.Module
    num_features: int
    normalize: nn.Module


def _load_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BgbiasError(f"{what} weights file not found: {path} (set model.weights in params.yaml)")
    state = safe_load(path, f"{what} weights file")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise BgbiasError(f"{what} weights file {path} holds no state dict (a {type(state).__name__})")
    return state


def efficientnet_lite0(weights: Path | None, assets_dir: Path, pretrained: bool = True) -> Backbone:
    import timm

    from bgbias.core.assets import asset_path

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        _load_efficientnet_lite0(model, weights or asset_path("efficientnet_lite0", assets_dir))
    model.reset_classifier(0)
    return Backbone(FeatureMap(model), model.num_features, Normalize(IMAGENET_MEAN, IMAGENET_STD))


def _load_efficientnet_lite0(model: nn.Module, source: Path) -> None:
    state = _load_file(Path(source), "efficientnet_lite0")
    target = model.state_dict()
    # The asset uses the lukemelas naming (_conv_stem, _blocks.N...); its tensors are in
    # the same order as timm's state_dict, with identical shapes (checked here).
    if list(state) != list(target):
        if len(state) != len(target) or any(a.shape != b.shape for a, b in zip(state.values(), target.values())):
            raise BgbiasError(f"{source}: not EfficientNet-Lite0 weights (tensor count or shapes differ)")
        state = dict(zip(target, state.values()))
    model.load_state_dict(state, strict=True)


def resnet50(weights: Path | None, assets_dir: Path, pretrained: bool = True) -> Backbone:
    from torchvision.models import resnet50 as tv_resnet50

    model = tv_resnet50(weights=None)
    if pretrained:
        _load_resnet50(model, weights)
    trunk = nn.Sequential(*list(model.children())[:-2])  # up to layer4: [B, 2048, h, w]
    return Backbone(trunk, 2048, Normalize(IMAGENET_MEAN, IMAGENET_STD))


def _load_resnet50(model: nn.Module, weights: Path | None) -> None:
    if weights is None:
        log.warning("resnet50: no model.weights file given, starting from random weights")
        return
    state = {k: v for k, v in _load_file(Path(weights), "resnet50").items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise BgbiasError(f"{weights}: not torchvision ResNet-50 weights ({str(exc).splitlines()[-1].strip()})") \
            from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise BgbiasError(f"{weights}: not torchvision ResNet-50 weights "
                          f"(e.g. {'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]})")


class BNInceptionInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bgbias.models.bninception import to_bninception_input

        return to_bninception_input(x)


def bninception(weights: Path | None, assets_dir: Path, pretrained: bool = True) -> Backbone:
    from bgbias.models.bninception import BNInception

    model = BNInception()
    if pretrained:
        _load_bninception(model, weights)
    return Backbone(model, 1024, BNInceptionInput())


def _load_bninception(model: nn.Module, weights: Path | None) -> None:
    if weights is None:
        raise BgbiasError("bninception needs ImageNet weights: set model.weights in params.yaml to the file "
                          "bn_inception-52deb4733.pth (Cadene's pretrainedmodels); nothing is downloaded")
    state = {k: v for k, v in _load_file(Path(weights), "bninception").items() if not k.startswith("last_linear.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BgbiasError(f"{weights}: not BN-Inception weights ({str(exc).splitlines()[0]})") from None


# Each builder takes (weights file or None, assets dir, pretrained); pretrained=False builds
# the architecture only, for a checkpoint that holds every weight anyway.
BACKBONES: dict[str, Callable[[Path | None, Path, bool], Backbone]] = {
    "efficientnet_lite0": efficientnet_lite0,
    "bninception": bninception,
    "resnet50": resnet50,
}


def create_backbone(name: str, weights: Path | None, assets_dir: Path, pretrained: bool = True) -> Backbone:
    if name not in BACKBONES:
        raise BgbiasError(f"unknown backbone '{name}'; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name](weights, assets_dir, pretrained)
