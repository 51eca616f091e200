"""Seeds derived from (run seed, stream, ...) so that every random stream (an epoch's
batches, the validation or test background draws) is reproducible on its own."""

from __future__ import annotations

import numpy as np

# Streams of background draws that must never coincide.
VAL_DRAWS = 1
TEST_DRAWS = 2


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
