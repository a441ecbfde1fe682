"""A new mechanism is one module plus one ``register_mechanism`` line; it then composes
with every backend and runs through ``fedsc run --mechanism`` unchanged."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap

import numpy as np
import pytest

import smpc
from smpc.mechanisms import MECHANISMS, register_mechanism

#: The whole new mechanism. Nothing else in the code base is edited.
TOY_MODULE = '''
"""Toy mechanism: each client rounds its contribution to ``decimals`` decimals."""

import numpy as np
from typing_extensions import override

from smpc.mechanisms.base import ClientContext, Mechanism


class RoundTo(Mechanism):
    name = "round_to"

    def __init__(self, decimals: int = 1) -> None:
        self.decimals = int(decimals)

    @override
    def transform_contribution(self, row: np.ndarray, ctx: ClientContext) -> np.ndarray:
        return np.round(row, self.decimals)

    @override
    def params(self):
        return {"decimals": self.decimals}
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_round.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_round", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_round"] = module
    spec.loader.exec_module(module)
    register_mechanism("round_to", module.RoundTo)  # the one registry line
    yield module
    MECHANISMS.unregister("round_to")
    del sys.modules["toy_round"]


X = [np.array([0.12, 1.26, -3.04]), np.array([2.47, -0.55, 0.91]), np.array([1.0, 2.0, 3.0])]
W = [10.0, 30.0, 60.0]


@pytest.mark.parametrize(
    "backend, options",
    [("plaintext", {}), ("crypten", {"transport": "threads"})],
    ids=["plaintext", "crypten"],
)
def test_toy_mechanism_composes_with_every_backend(toy, backend, options):
    want = np.average([np.round(x, 1) for x in X], axis=0, weights=W)
    with smpc.make_aggregator(
        backend, mechanisms=[("round_to", {"decimals": 1})], **options
    ) as agg:
        got = agg.weighted_mean(X, W)
        (entry,) = agg.ledger.entries
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert not np.allclose(got, np.average(X, axis=0, weights=W), atol=1e-3)  # it did act
    assert entry.mechanisms == [{"name": "round_to", "decimals": 1}]


def test_register_refuses_a_taken_name(toy):
    with pytest.raises(ValueError, match="'round_to' is already registered"):
        register_mechanism("round_to", toy.RoundTo)


def test_fedsc_run_applies_the_new_mechanism(toy, tmp_path, capsys):
    from fedsc.cli import main

    out = tmp_path / "run"
    code = main(
        ["run", "scbatchprox", "--seed", "0", "--rounds", "1", "--panels", "",
         "--mechanism", "round_to", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    entries = json.loads((out / "run.json").read_text())["ledger"]["entries"]
    fedavg = [e for e in entries if e["tag"] == "fedavg"]
    assert fedavg and all(e["mechanisms"] == [{"name": "round_to", "decimals": 1}] for e in fedavg)
