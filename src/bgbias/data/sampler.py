"""M-per-class batches with a fixed number of iterations per epoch.

Like pytorch-metric-learning's MPerClassSampler (batch = batch_size / m classes x m
images), but every epoch's batches are a pure function of (seed, epoch, rank): a resumed
run replays exactly the batches the killed one would have drawn, and each DDP rank draws
its own shard."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bgbias.core.seeds import Stream, stream_rng
from bgbias.core.errors import BgbiasError


class MPerClassBatchSampler:
    def __init__(self, labels: np.ndarray, m: int, batch_size: int, iterations: int, seed: int,
                 rank: int = 0):
        if batch_size % m:
            raise BgbiasError(f"train.batch_size ({batch_size}) must be a multiple of m_per_class ({m})")
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if len(self.by_class) * m < batch_size:
            raise BgbiasError(f"train.batch_size ({batch_size}) needs at least {batch_size // m} train classes "
                              f"at m={m}; the split has {len(self.by_class)}")
        self.m, self.batch_size, self.iterations = m, batch_size, iterations
        self.seed, self.rank, self.epoch = seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.iterations

    def __iter__(self) -> Iterator[list[int]]:
        rng = stream_rng(self.seed, Stream.BATCHES, self.epoch, self.rank)
        n_classes = self.batch_size // self.m
        for _ in range(self.iterations):
            batch: list[int] = []
            for c in rng.choice(len(self.by_class), n_classes, replace=False):
                members = self.by_class[c]
                batch += rng.choice(members, self.m, replace=len(members) < self.m).tolist()
            yield batch
