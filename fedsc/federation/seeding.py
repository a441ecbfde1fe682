"""The one seed derivation of the package: independent generators from ``(seed, *keys)``.

Every random stream (a client's round in the engine, a method's initial weights, data
splits, epochs) is derived from the run seed and integer purpose keys with
:class:`numpy.random.SeedSequence`, so no stream depends on global RNG state or on which
other streams were drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _sequence(seed: int, keys: Sequence[int]) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *(int(k) for k in keys)])


def derive_generator(seed: int, *keys: int) -> torch.Generator:
    """An independent torch generator for ``(seed, *keys)``."""
    g = torch.Generator()
    state = _sequence(seed, keys).generate_state(1, dtype=np.uint64)[0]
    g.manual_seed(int(state & ((1 << 63) - 1)))
    return g


def derive_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *keys)``."""
    return np.random.default_rng(_sequence(seed, keys))


def client_generators(seed: int, round_index: int, clients: Sequence[int]) -> list[torch.Generator]:
    """One torch generator per client for round ``round_index``: ``(seed, round, client)``.

    Independent of client order and of how many other clients take part.
    """
    return [derive_generator(seed, round_index, c) for c in clients]
