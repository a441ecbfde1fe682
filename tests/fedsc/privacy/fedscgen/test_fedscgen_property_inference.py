"""Property inference against FedscGen: composition from updates and revealed values."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

from fedsc.datasets.simulation import simulate
from fedsc.privacy import COLUMNS, run_attacks
from fedsc.privacy.property_inference import (
    AuxiliaryProfiles,
    composition,
    estimate_counts_from_revealed,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _overall(views, prefix):
    """The coordinator's ``fedscgen_property`` rows of ``prefix`` (update or revealed)."""
    df = run_attacks(views.view("coordinator"), views.truth, ["fedscgen_property"])
    assert list(df.columns) == COLUMNS and (df["target_client"] == -1).all()
    df = df[df["metric"].str.startswith(prefix)]
    return df.assign(metric=df["metric"].str.removeprefix(prefix)).set_index("metric")


@pytest.fixture(scope="module")
def simulated(capture):
    """5 simulated clients with very different compositions (Dirichlet 1), no batch effect."""
    a = simulate(
        n_cells=600, n_genes=500, n_batches=5, n_cell_types=4, batch_effect=0.0, composition=1.0
    )
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return capture(a, seed=0, local_epochs=2)


def test_composition():
    np.testing.assert_allclose(
        composition(np.array(["a", "b", "b", "c"]), ["b", "a", "z"]), [0.5, 0.25, 0.0]
    )


def test_revealed_values_give_each_clients_majority_type(views):
    """Pancreas: the revealed dominant clients and counts name every client's majority type."""
    o = _overall(views, "revealed_")
    assert o.loc["majority_accuracy", "value"] == 1.0 > o.loc["majority_accuracy", "chance"] == 0.6
    assert o.loc["proportion_mae", "value"] < o.loc["proportion_mae", "chance"]
    assert o.loc["proportion_pearson", "value"] > o.loc["proportion_pearson", "chance"]


def test_estimate_counts_from_revealed():
    revealed = {
        "vocabulary": ["a", "b", "c", "d"],
        "n_clients_per_type": {"a": 2, "b": 2, "c": 1, "d": 0},
        "dominant": {"a": 0, "b": 1},
        "dominant_count": {"a": 30.0, "b": 50.0},
    }
    # client 0: exact 30 of "a"; the other 70 spread over b (bound 50) and c (standalone:
    # bound = its size 100); client 1: exact 50 of "b", 10 over a (30) and c (60)
    np.testing.assert_allclose(
        estimate_counts_from_revealed(revealed, 0, 100), [30, 70 / 3, 140 / 3, 0]
    )
    np.testing.assert_allclose(
        estimate_counts_from_revealed(revealed, 1, 60), [10 / 3, 50, 20 / 3, 0]
    )


def test_update_reveals_composition_without_batch_effects(simulated):
    """Plaintext coordinator: the local update's batch-norm mean beats the prior."""
    o = _overall(simulated, "update_")
    assert o.loc["proportion_mae", "value"] < 0.75 * o.loc["proportion_mae", "chance"]
    assert o.loc["proportion_pearson", "value"] > 0.8 > o.loc["proportion_pearson", "chance"]


def test_update_attack_on_pancreas_runs(views):
    """Pancreas (technologies as clients): rows over the clients; accuracy is reported, not
    asserted."""
    o = _overall(views, "update_")
    assert list(o.index) == ["majority_accuracy", "proportion_mae", "proportion_pearson"]
    assert o["value"].notna().all()


def test_auxiliary_profiles_equal_the_other_clients_pooled_cells():
    """Leave-one-out sums give the means and prior of concatenating the other clients."""
    rng = np.random.default_rng(0)
    vocab = ["a", "b", "c", "d"]
    data = {c: torch.tensor(rng.normal(size=(40 + c, 6)), dtype=torch.float32) for c in range(4)}
    # client 2 lacks "d"
    labels = {c: rng.choice(vocab[:3] if c == 2 else vocab, size=40 + c) for c in range(4)}
    aux = AuxiliaryProfiles(data, labels, vocab)
    for target in data:
        others = [o for o in data if o != target]
        x = torch.cat([data[o] for o in others]).double().numpy()
        y = np.concatenate([labels[o] for o in others])
        present, means, prior = aux.excluding(target)
        assert present == [t for t in vocab if (y == t).any()]
        np.testing.assert_allclose(
            means, np.stack([x[y == t].mean(axis=0) for t in present]), rtol=1e-12, atol=1e-15
        )
        np.testing.assert_allclose(prior, composition(y, vocab), rtol=1e-15)
    # types only the target holds are absent from its auxiliary data
    two = AuxiliaryProfiles({0: data[0], 1: data[1]}, {0: labels[0], 1: np.full(41, "b")}, vocab)
    present, means, prior = two.excluding(0)
    assert present == ["b"] and prior.tolist() == [0.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(means[0], data[1].double().numpy().mean(axis=0), rtol=1e-12)
