"""M-per-class batches: composition, determinism per (seed, epoch, rank)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bgbias.data.sampler import MPerClassBatchSampler
from bgbias.core.errors import BgbiasError

LABELS = np.repeat(np.arange(6), [5, 5, 5, 5, 5, 2])  # class 5 has fewer than m images


def test_each_batch_has_batch_size_over_m_classes_with_m_images_each():
    sampler = MPerClassBatchSampler(LABELS, m=4, batch_size=12, iterations=50, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    for batch in batches:
        counts = Counter(LABELS[batch].tolist())
        assert len(batch) == 12 and len(counts) == 3 and set(counts.values()) == {4}


def test_batches_depend_only_on_seed_epoch_and_rank():
    def batches(seed=0, epoch=1, rank=0):
        s = MPerClassBatchSampler(LABELS, m=2, batch_size=4, iterations=5, seed=seed, rank=rank)
        s.set_epoch(epoch)
        return list(s)

    assert batches() == batches()
    assert batches(epoch=2) != batches(epoch=1)
    assert batches(rank=1) != batches(rank=0)
    assert batches(seed=1) != batches(seed=0)


def test_impossible_batches_are_clear_errors():
    with pytest.raises(BgbiasError, match="multiple of m_per_class"):
        MPerClassBatchSampler(LABELS, m=4, batch_size=10, iterations=1, seed=0)
    with pytest.raises(BgbiasError, match="at least 8 train classes"):
        MPerClassBatchSampler(LABELS, m=4, batch_size=32, iterations=1, seed=0)
