"""Seeds derived from (run seed, named stream, indices) so that every random stream (an
epoch's batches, the validation or test background draws, ...) is reproducible on its own
and never coincides with another.

The stream is numpy's SeedSequence *spawn key*, not part of its entropy: trailing zeros of
the entropy are dropped (`SeedSequence([0, 1, 0]) == SeedSequence([0, 1])`), so an entropy
list `[seed, stream, index]` made validation draws equal epoch 1's stream. Spawn-key words
are all mixed in, zeros included, so `(stream,)` and `(stream, 0)` differ.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """Every seeded stream of a run. A value is a stream's identity: never change or reuse one."""

    EPOCH = 1  # (epoch, rank): crops, flips and BGAugment draws of one epoch
    BATCHES = 2  # (epoch, rank): the M-per-class sampler's batches
    MODEL_INIT = 3  # (): the embedding layer's (and loss proxies') initial weights
    VAL_DRAWS = 4  # (): the validation set's background draw
    TEST_DRAWS = 5  # (draw,): the test set's replaced-background draws
    ATTRIBUTION_SAMPLE = 6  # (): which test images get saliency maps
    ATTRIBUTION_NOISE = 7  # (): SmoothGrad's noise
    TUNE_SAMPLER = 8  # (worker, finished trials): the TPE sampler of one `bgbias tune` call
    MIXED_SAME = 9  # (draw,): mixed_same test condition: the same-class image lending each background
    MIXED_RAND = 10  # (draw,): mixed_rand test condition: the other-class image lending each background
    WORST_OF_K = 11  # (k,): the k-th test-pool background of the worst-of-K test condition


def seed_sequence(seed: int, stream: Stream, *index: int) -> np.random.SeedSequence:
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a Stream, got {stream!r}")
    return np.random.SeedSequence(seed, spawn_key=(int(stream), *index))


def derived_seed(seed: int, stream: Stream, *index: int) -> int:
    """A 32-bit seed (for torch.Generator / Optuna) of one stream."""
    return int(seed_sequence(seed, stream, *index).generate_state(1)[0])


def stream_rng(seed: int, stream: Stream, *index: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, stream, *index))
