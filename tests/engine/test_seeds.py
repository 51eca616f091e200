"""Named random streams never coincide (numpy's SeedSequence drops trailing zeros of its
entropy: an entropy list [seed, stream, index] made [0, 1, 0] and [0, 1] one stream)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bgbias.core.seeds import Stream, derived_seed, seed_sequence, stream_rng

SEEDS = (0, 1, 2, 7)
# Index tuples as the streams use them, with the zero-heavy cases that used to collide.
INDICES = ((), (0,), (1,), (2,), (0, 0), (1, 0), (2, 0), (1, 1), (3, 0), (4, 0))


def test_every_named_stream_differs_from_every_other():
    seen: dict[tuple, tuple] = {}
    for seed, stream, index in itertools.product(SEEDS, Stream, INDICES):
        state = tuple(seed_sequence(seed, stream, *index).generate_state(4).tolist())
        assert state not in seen, f"{(seed, stream.name, index)} == {seen[state]}"
        seen[state] = (seed, stream.name, index)
    assert len(seen) == len(SEEDS) * len(Stream) * len(INDICES)


def test_the_collisions_of_the_old_scheme_are_gone():
    # Old: derived_seed(0, 1, 0) == derived_seed(0, 1): validation draws (stream 1) equalled epoch 1.
    assert int(np.random.SeedSequence([0, 1, 0]).generate_state(1)[0]) == \
        int(np.random.SeedSequence([0, 1]).generate_state(1)[0])
    assert derived_seed(0, Stream.VAL_DRAWS) != derived_seed(0, Stream.EPOCH, 1, 0)
    assert derived_seed(0, Stream.EPOCH, 1, 0) != derived_seed(0, Stream.EPOCH, 1)
    assert derived_seed(0, Stream.TEST_DRAWS, 0) != derived_seed(0, Stream.EPOCH, 2)
    assert derived_seed(0, Stream.ATTRIBUTION_SAMPLE) != derived_seed(0, Stream.EPOCH, 3)


def test_streams_are_reproducible_and_need_a_name():
    assert derived_seed(5, Stream.EPOCH, 3, 1) == derived_seed(5, Stream.EPOCH, 3, 1)
    assert stream_rng(5, Stream.BATCHES, 2).integers(1 << 30, size=4).tolist() == \
        stream_rng(5, Stream.BATCHES, 2).integers(1 << 30, size=4).tolist()
    with pytest.raises(TypeError, match="Stream"):
        derived_seed(0, 1)  # a bare number is not a stream
    assert [s.value for s in Stream] == list(range(1, len(Stream) + 1))  # explicit, distinct keys
