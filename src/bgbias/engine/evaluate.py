"""Embeddings of a split and their retrieval metrics (pytorch-metric-learning's
AccuracyCalculator with k = "max_bin_count", as the paper)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool, replace_backgrounds
from bgbias.data.transforms import split_batch
from bgbias.engine.device import DeviceSetup

METRICS = ("map_at_r", "precision_at_1", "r_precision")
_PML_NAMES = {"mean_average_precision_at_r": "map_at_r", "precision_at_1": "precision_at_1",
              "r_precision": "r_precision"}


@torch.no_grad()
def embed(model: nn.Module, loader: DataLoader, setup: DeviceSetup,
          pool: BackgroundPool | None = None, draws: BackgroundDraw | None = None,
          desc: str = "embed", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, dim] (L2-normalised) and labels [N] of the loader's dataset, in
    dataset order. With `pool` and `draws` (one draw per dataset item), each image's
    background is replaced first."""
    was_training = model.training
    model.eval()
    embeddings, labels, order = [], [], []
    for batch, batch_labels, index in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images, masks = split_batch(batch.to(setup.device, non_blocking=True))
        if pool is not None:
            images = replace_backgrounds(images, masks, pool, draws.select(index))
        with setup.autocast():
            out = model(setup.to_input(images))
        embeddings.append(F.normalize(out.float(), dim=1).cpu())
        labels.append(batch_labels)
        order.append(index)
    model.train(was_training)
    order = torch.cat(order).argsort()
    return torch.cat(embeddings)[order].numpy(), torch.cat(labels)[order].numpy()


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MAP@R, Precision@1 and R-Precision, each query against all other items."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calculator = AccuracyCalculator(include=tuple(_PML_NAMES), k="max_bin_count", device=torch.device("cpu"))
    result = calculator.get_accuracy(torch.from_numpy(embeddings), torch.from_numpy(labels))
    return {_PML_NAMES[k]: float(v) for k, v in result.items()}


def summarize_draws(per_draw: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (population) std of each metric over the background draws."""
    return {name: {"mean": float(np.mean([d[name] for d in per_draw])),
                   "std": float(np.std([d[name] for d in per_draw])),
                   "draws": len(per_draw)}
            for name in METRICS}
