"""The embedding model: backbone trunk, global average pooling, linear embedding."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bgbias.core.config import ModelConfig
from bgbias.core.seeds import Stream, derived_seed
from bgbias.models.backbones import Backbone, create_backbone


class Embedder(nn.Module):
    """RGB batch in [0, 1], [B, 3, H, W] -> embeddings [B, dim] (not normalised: the losses'
    distances normalise, as in pytorch-metric-learning)."""

    def __init__(self, backbone: Backbone, embedding_dim: int, freeze_bn: bool = True):
        super().__init__()
        self.normalize = backbone.normalize
        self.trunk = backbone.trunk
        self.embedding = nn.Linear(backbone.num_features, embedding_dim)
        self.freeze_bn = freeze_bn

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's globally average-pooled features [B, C], before the embedding layer."""
        return self.trunk(self.normalize(images)).mean(dim=(2, 3))  # [B, C, h, w] -> [B, C]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.pooled(images))  # [B, dim]

    def train(self, mode: bool = True) -> Embedder:
        super().train(mode)
        if mode and self.freeze_bn:
            # Frozen BN as in the paper: batch statistics of 32 images of 8 classes would
            # drift the ImageNet running stats; eval mode uses and keeps them. The affine
            # weights still train.
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def parameter_groups(self, lr: float, lr_embedding: float | None) -> list[dict]:
        return [
            {"params": list(self.trunk.parameters()), "lr": lr, "name": "trunk"},
            {"params": list(self.embedding.parameters()), "lr": lr_embedding or lr, "name": "embedding"},
        ]


class StartingPoint(nn.Module):
    """An untrained embedder's two retrieval references from one pass of its backbone:
    {"initialised": its embeddings (backbone + fresh embedding layer), "pooled_features":
    the backbone's pooled features alone [B, C]}; every trained model must beat both."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.embedder.pooled(images)
        return {"initialised": self.embedder.embedding(pooled), "pooled_features": pooled}


def create_model(cfg: ModelConfig, assets_dir: Path, pretrained: bool = True) -> Embedder:
    """pretrained=False skips the ImageNet weights: for loading a trained checkpoint, which
    then works without the weights file (e.g. a bninception model on another machine)."""
    backbone = create_backbone(cfg.backbone, cfg.weights, assets_dir, pretrained)
    return Embedder(backbone, cfg.embedding_dim, cfg.freeze_bn)


def initial_model(cfg: ModelConfig, assets_dir: Path, seed: int) -> Embedder:
    """The model a training starts from: ImageNet backbone + the seeded fresh embedding
    layer. Evaluation rebuilds it as the untrained reference, so both seed the same way."""
    torch.manual_seed(derived_seed(seed, Stream.MODEL_INIT))
    return create_model(cfg, assets_dir)
