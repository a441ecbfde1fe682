"""The engine announces its rounds' FedAvg shape, so the crypten backend prepares the
masks of every round ahead of it (``smpc.prepared``), with the same global state."""

from __future__ import annotations

import torch

import smpc
from fedsc.federation import LocalResult, run_federation
from smpc.crypten_backend import CryptenAggregator


class NoisyMethod:
    """Client c returns its own noisy copy of the global state (4 clients, 2 tensors)."""

    def initial_state(self):
        return {"w": torch.zeros(50, 3), "b": torch.zeros(7)}

    def local_update(self, client, global_state, round_index, generator):
        state = {k: v + torch.randn(v.shape, generator=generator) for k, v in global_state.items()}
        return LocalResult(state, weight=float(client + 1))


def test_every_fedavg_round_uses_prepared_masks():
    with smpc.make_aggregator("plaintext") as plain:
        want = run_federation(NoisyMethod(), range(4), plain, rounds=4, seed=3).state
    with CryptenAggregator(transport="threads", prepare_masks=True) as agg:  # parties up now
        got = run_federation(NoisyMethod(), range(4), agg, rounds=4, seed=3).state
        assert agg.prepared_operations == 4  # every FedAvg round (not the metrics)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6)
