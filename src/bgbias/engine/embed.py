"""Embeddings of a split and their retrieval metrics (pytorch-metric-learning's
AccuracyCalculator with k = "max_bin_count", as the paper)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool, replace_backgrounds
from bgbias.data.transforms import split_batch
from bgbias.engine.device import DeviceSetup
from bgbias.engine.train_input import device_batches

METRICS = ("map_at_r", "precision_at_1", "r_precision")
_PML_NAMES = {"mean_average_precision_at_r": "map_at_r", "precision_at_1": "precision_at_1",
              "r_precision": "r_precision"}


SINGLE = "embedding"  # the one head of a model whose output is a tensor


@torch.no_grad()
def embed_heads(model: nn.Module, loader: DataLoader, setup: DeviceSetup,
                pool: BackgroundPool | None = None, draws: BackgroundDraw | None = None,
                desc: str = "embed", progress: bool = True,
                compose: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Embeddings [N, dim] (L2-normalised) per output head, and labels [N], of the loader's
    dataset, in dataset order. A model returns a tensor (head SINGLE) or a dict of them (several
    views from one pass, e.g. the untrained references). With `pool` and `draws` (one draw per
    dataset item), each image's background is replaced first; `compose` instead makes the
    images from the whole batch (float [B, C, H, W] in [0, 1]: RGB, mask and whatever
    channels the dataset adds)."""
    def to_device(batch: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> tuple:
        batch = batch.to(setup.device, non_blocking=True)
        if compose is not None:
            return compose(batch.float().div_(255.0)), labels, index
        images, masks = split_batch(batch)
        if pool is not None:
            images = replace_backgrounds(images, masks, pool, draws.select(index))
        return images, labels, index

    was_training = model.training
    model.eval()
    embeddings: dict[str, list[torch.Tensor]] = {}
    labels, order = [], []
    # On CUDA the input is made one batch ahead on a side stream, and embeddings stay on the
    # device until the end: no host sync per batch.
    batches = device_batches(loader, to_device, setup, setup.overlap_input)
    for images, batch_labels, index in tqdm(batches, total=len(loader), desc=desc, leave=False, disable=not progress):
        with setup.autocast():
            out = model(setup.to_input(images))
        for head, value in (out.items() if isinstance(out, dict) else ((SINGLE, out),)):
            embeddings.setdefault(head, []).append(F.normalize(value.float(), dim=1))
        labels.append(batch_labels)
        order.append(index)
    model.train(was_training)
    order = torch.cat(order).argsort()
    return ({head: torch.cat(parts).cpu()[order].numpy() for head, parts in embeddings.items()},
            torch.cat(labels)[order].numpy())


def embed(model: nn.Module, loader: DataLoader, setup: DeviceSetup, pool: BackgroundPool | None = None,
          draws: BackgroundDraw | None = None, desc: str = "embed", progress: bool = True,
          compose: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`embed_heads` of a model with one output: its embeddings [N, dim] and labels [N]."""
    heads, labels = embed_heads(model, loader, setup, pool, draws, desc, progress, compose)
    (embeddings,) = heads.values()
    return embeddings, labels


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


@torch.no_grad()
def average_precision_at_r(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray,
                           chunk: int = 1024) -> np.ndarray:
    """AP@R [N] of each query i against gallery items j != i (queries [N, d] and gallery
    [N, d], L2-normalised, row i of both the same test image; labels [N]). R_i is the
    number of other gallery items of i's class; AP@R = (1/R) sum over the first R
    neighbours of precision@k at each hit (NaN where R is 0: PML leaves such queries out). With queries == gallery its mean is
    pytorch-metric-learning's MAP@R (k="max_bin_count", ties aside)."""
    q, g = torch.from_numpy(queries).float(), torch.from_numpy(gallery).float()
    y = torch.from_numpy(np.asarray(labels))
    counts = torch.bincount(y.long() - int(y.min()))[y.long() - int(y.min())] - 1  # R per query
    depth = max(int(counts.max()), 1)
    ap = torch.zeros(len(q), dtype=torch.float64)
    for start in range(0, len(q), chunk):
        rows = torch.arange(start, min(start + chunk, len(q)))
        similarity = q[rows] @ g.T  # [n, N]; on unit vectors the same order as L2 distance
        similarity[torch.arange(len(rows)), rows] = -torch.inf  # the query's own image is no neighbour
        neighbours = similarity.topk(min(depth, len(g) - 1), dim=1).indices  # [n, depth]
        r = counts[rows]
        within_r = torch.arange(neighbours.shape[1])[None, :] < r[:, None]
        hits = (y[neighbours] == y[rows][:, None]) & within_r
        precision = hits.cumsum(1).double() / torch.arange(1, neighbours.shape[1] + 1)
        ap[rows] = torch.where(r > 0, (precision * hits).sum(1) / r.clamp(min=1), torch.nan)
    return ap.numpy()
