"""Flattening contributions: one float64 row per client, written in place, structure kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smpc.flatten import flatten, flatten_all


def _state(seed: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 4, generator=g),  # float32
        "b": torch.randn(4, generator=g, dtype=torch.float64),
        "h": torch.randn(5, generator=g).to(torch.bfloat16),  # numpy has no bfloat16
        "n": torch.tensor(7 + seed),  # int64, 0-d
        "m": torch.tensor([True, False]),
        "x": np.arange(6, dtype=np.int32).reshape(2, 3) * (seed + 1),
        "g": -torch.ones(2, requires_grad=True),  # tracks gradients
    }


def _reference(state: dict[str, object]) -> np.ndarray:
    """The slow way: every leaf to float64, then concatenated in key order."""
    parts = []
    for key in sorted(state):
        v = state[key]
        if isinstance(v, torch.Tensor):
            parts.append(v.detach().to(torch.float64).numpy().ravel())
        else:
            parts.append(np.asarray(v, dtype=np.float64).ravel())
    return np.concatenate(parts)


def test_flatten_all_equals_the_reference_and_round_trips():
    states = [_state(s) for s in range(3)]
    matrix, spec = flatten_all(states)
    assert matrix.dtype == np.float64 and matrix.shape == (3, spec.size)
    np.testing.assert_array_equal(matrix, np.stack([_reference(s) for s in states]))
    back = spec.unflatten(matrix[1])
    for key, value in states[1].items():
        if isinstance(value, torch.Tensor):
            assert back[key].dtype == value.dtype and torch.equal(back[key], value.detach())
        else:
            np.testing.assert_array_equal(back[key], value)
    flat, single = flatten(states[2])
    np.testing.assert_array_equal(flat, matrix[2])
    assert single == spec


def test_flatten_all_never_aliases_the_clients_memory():
    states = [{"w": torch.zeros(4, dtype=torch.float64)} for _ in range(2)]
    matrix, _ = flatten_all(states)
    matrix[:] = 5.0
    assert torch.equal(states[0]["w"], torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize(
    ("contributions", "error", "match"),
    [
        ([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], ValueError, "client 1: its contribution"),
        ([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}], ValueError, "same structure"),
        ([torch.zeros(2), torch.tensor([0.0, float("nan")])], ValueError, "client 1: .*NaN"),
        ([np.array(["a", "b"])], TypeError, "client 0: expected a numeric"),
        ([{}], ValueError, "empty mapping"),
        ([], ValueError, "at least one client"),
        ({"a": torch.zeros(1)}, TypeError, "one entry per client"),
    ],
)
def test_bad_contributions_name_the_client_and_the_fix(contributions, error, match):
    with pytest.raises(error, match=match):
        flatten_all(contributions)
