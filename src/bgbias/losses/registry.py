"""Explicit registry of the five pytorch-metric-learning losses the paper compares.

Every hyperparameter is passed explicitly (pytorch-metric-learning 3.x changes some
defaults, DESIGN.md section 6). The classification losses own learnable weights and
therefore `num_classes` (the number of train classes, derived from the data) and an
optimizer group with their own learning rate `lr_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bgbias.core.errors import BgbiasError
from bgbias.core.loss_params import CLASSIFICATION_LOSSES, HYPERPARAMETERS


@dataclass
class LossSetup:
    loss: nn.Module
    lr_loss: float | None  # learning rate of the loss's own parameters, None if it has none

    @property
    def is_classification(self) -> bool:
        return self.lr_loss is not None


def _contrastive(h: dict, num_classes: int, dim: int) -> nn.Module:
    from pytorch_metric_learning.losses import ContrastiveLoss

    return ContrastiveLoss(pos_margin=h["pos_margin"], neg_margin=h["neg_margin"])


def _triplet(h: dict, num_classes: int, dim: int) -> nn.Module:
    from pytorch_metric_learning.losses import TripletMarginLoss

    return TripletMarginLoss(margin=h["margin"], swap=False, smooth_loss=False, triplets_per_anchor="all")


def _multi_similarity(h: dict, num_classes: int, dim: int) -> nn.Module:
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    return MultiSimilarityLoss(alpha=h["alpha"], beta=h["beta"], base=h["base"])


def _arcface(h: dict, num_classes: int, dim: int) -> nn.Module:
    from pytorch_metric_learning.losses import ArcFaceLoss

    return ArcFaceLoss(num_classes=num_classes, embedding_size=dim, margin=h["margin"], scale=h["scale"])


def _normalized_softmax(h: dict, num_classes: int, dim: int) -> nn.Module:
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    return NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=dim, temperature=h["temperature"])


LOSS_BUILDERS: dict[str, Callable[[dict, int, int], nn.Module]] = {
    "contrastive": _contrastive,
    "triplet": _triplet,
    "multi_similarity": _multi_similarity,
    "arcface": _arcface,
    "normalized_softmax": _normalized_softmax,
}


def create_loss(name: str, hyperparameters: dict[str, float], num_classes: int, embedding_dim: int) -> LossSetup:
    if name not in LOSS_BUILDERS:
        raise BgbiasError(f"unknown loss '{name}'; allowed: {', '.join(LOSS_BUILDERS)}")
    missing = [k for k in HYPERPARAMETERS[name] if k not in hyperparameters]
    if missing:
        raise BgbiasError(f"loss '{name}' needs hyperparameter '{missing[0]}'")
    if name in CLASSIFICATION_LOSSES and num_classes < 2:
        raise BgbiasError(f"loss '{name}' needs at least 2 train classes (got {num_classes})")
    loss = LOSS_BUILDERS[name](hyperparameters, num_classes, embedding_dim)
    lr_loss = hyperparameters["lr_loss"] if name in CLASSIFICATION_LOSSES else None
    return LossSetup(loss=loss, lr_loss=lr_loss)
