"""Test-set retrieval under the background-swap conditions (data/conditions.py says what
each one is) and the worst-of-K test: per query, the lowest AP@R over K test-pool
backgrounds put behind the query while the gallery stays the clean test set (the query's
own clean image excluded), averaged over the queries.

Every model sees the same object-removed backgrounds, partner draws and worst-of-K
backgrounds; all are seeded (named streams in engine/seeds.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bgbias.core.config import EvalConfig
from bgbias.data.bgaugment import BackgroundDraw, BackgroundPool, composite
from bgbias.data.conditions import SwapDataset, only_fg, partners, write_object_removed
from bgbias.data.image_dataset import MaskedImageDataset
from bgbias.engine.device import DeviceSetup
from bgbias.engine.embed import average_precision_at_r, embed_heads, retrieval_metrics, summarize_draws
from bgbias.core.seeds import Stream, derived_seed, stream_rng
from bgbias.core.files import write_text

MIXED = {"mixed_same": (True, Stream.MIXED_SAME), "mixed_rand": (False, Stream.MIXED_RAND)}


@dataclass
class SwapSuite:
    """What every model is evaluated on, built once per evaluation."""

    test_set: MaskedImageDataset
    removed_dir: Path  # object-removed backgrounds, one PNG per test image
    conditions: tuple[str, ...]
    partners: dict[str, list[np.ndarray]]  # mixed_*: per draw, the image lending each background
    pool: BackgroundPool
    worst_draws: list[BackgroundDraw]  # worst-of-K: the k-th background of every query
    batch_size: int
    loader_options: dict

    def loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **self.loader_options)

    def view(self, name: str, draw: int = 0) -> tuple[Dataset, Callable[[torch.Tensor], torch.Tensor]]:
        """The dataset a condition reads and how a batch of it (float [B, C, H, W]) becomes images."""
        if name == "only_fg":
            return self.test_set, lambda b: only_fg(b[:, :3], b[:, 3:4])
        if name == "only_bg":
            return SwapDataset(self.test_set, self.removed_dir), lambda b: b[:, 4:7]
        if name in MIXED:
            return SwapDataset(self.test_set, self.removed_dir, self.partners[name][draw]), _mixed
        raise KeyError(name)


def build_suite(cfg: EvalConfig, seed: int, test_set: MaskedImageDataset, pool: BackgroundPool, out_dir: Path,
                setup: DeviceSetup) -> SwapSuite:
    removed_dir = out_dir / "object_removed"
    if {"only_bg", *MIXED} & set(cfg.conditions):
        write_object_removed(test_set, removed_dir)
    drawn = {name: [partners(test_set.labels, same, stream_rng(seed, stream, d)) for d in range(cfg.replaced_draws)]
             for name, (same, stream) in MIXED.items() if name in cfg.conditions}
    worst = [pool.draw(len(test_set), torch.Generator().manual_seed(derived_seed(seed, Stream.WORST_OF_K, k)))
             for k in range(cfg.worst_of_k)]
    return SwapSuite(test_set, removed_dir, tuple(cfg.conditions), drawn, pool, worst, cfg.batch_size,
                     setup.loader_options())


def _mixed(batch: torch.Tensor) -> torch.Tensor:
    return composite(batch[:, :3], batch[:, 3:4], batch[:, 4:7])


def evaluate_swaps(model: nn.Module, suite: SwapSuite, setup: DeviceSetup, clean: dict[str, np.ndarray],
                   progress: bool = True) -> dict[str, dict]:
    """Per output head (engine/evaluate.embed_heads): metrics per condition (drawn ones: mean
    and std over draws), `bg_gap` (mixed_same - mixed_rand, per draw) and `worst_of_k`;
    `clean`: the head's clean embeddings [N, d]."""
    results: dict[str, dict] = {head: {} for head in clean}

    def run(name: str, dataset: Dataset, compose) -> dict[str, dict[str, float]]:
        heads, labels = embed_heads(model, suite.loader(dataset), setup, desc=f"test {name}", progress=progress,
                                    compose=compose)
        return {head: retrieval_metrics(embeddings, labels) for head, embeddings in heads.items()}

    for name in ("only_fg", "only_bg"):
        if name in suite.conditions:
            for head, metrics in run(name, *suite.view(name)).items():
                results[head][name] = metrics
    per_draw = {name: [run(f"{name} {d + 1}", *suite.view(name, d)) for d in range(len(draws))]
                for name, draws in suite.partners.items()}
    for head, result in results.items():
        drawn = {name: [metrics[head] for metrics in runs] for name, runs in per_draw.items()}
        result.update({name: summarize_draws(values) for name, values in drawn.items()})
        if len(drawn) == len(MIXED):
            gaps = [s["map_at_r"] - r["map_at_r"] for s, r in zip(drawn["mixed_same"], drawn["mixed_rand"])]
            result["bg_gap"] = {"map_at_r": {"mean": float(np.mean(gaps)), "std": float(np.std(gaps)),
                                             "draws": len(gaps)}}
    if suite.worst_draws:
        for head, worst in worst_of_k(model, suite, setup, clean, progress).items():
            results[head]["worst_of_k"] = worst
    return results


def worst_of_k(model: nn.Module, suite: SwapSuite, setup: DeviceSetup, clean: dict[str, np.ndarray],
               progress: bool) -> dict[str, dict]:
    loader = suite.loader(suite.test_set)
    labels = suite.test_set.labels
    ap: dict[str, list[np.ndarray]] = {head: [] for head in clean}
    for k, draw in enumerate(suite.worst_draws):
        queries = embed_heads(model, loader, setup, suite.pool, draw, desc=f"worst-of-K {k + 1}", progress=progress)[0]
        for head, gallery in clean.items():
            ap[head].append(average_precision_at_r(queries[head], gallery, labels))
    return {head: {"map_at_r": float(np.nanmean(np.min(values, axis=0))), "k": len(suite.worst_draws),
                   "query_replaced_map_at_r": float(np.nanmean(values))}
            for head, values in ap.items()}


def write_suite_draws(out_dir: Path, suite: SwapSuite) -> None:
    """The record of every draw: `test_partners.csv` (the image lending each background)
    and `worst_of_k_backgrounds.csv` (the k-th test-pool crop behind each query)."""
    paths = [s.path for s in suite.test_set.samples]
    rows = ["image,condition,draw,partner"]
    rows += [f"{paths[i]},{name},{d},{paths[j]}" for name, draws in suite.partners.items()
             for d, partner in enumerate(draws) for i, j in enumerate(partner)]
    write_text(out_dir / "test_partners.csv", "\n".join(rows) + "\n")
    rows = ["image,k,background,side,centre_x,centre_y"]
    for k, draw in enumerate(suite.worst_draws):
        for i, path in enumerate(paths):
            side, cx, cy = draw.box[i].tolist()
            rows.append(f"{path},{k},{suite.pool.names[draw.photo[i]]},{side:.6f},{cx:.6f},{cy:.6f}")
    write_text(out_dir / "worst_of_k_backgrounds.csv", "\n".join(rows) + "\n")
