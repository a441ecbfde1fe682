"""Secure scBatchProx (``secure_rows=True``): the paper's mathematics, rows kept client-side.

What is checked: the refined embedding equals the paper-faithful one; the coordinator
(the caller of the aggregator) receives the total weight and nothing else, so its view
is the same for any two datasets with the same batch sizes; each client receives only
its own row. The public-information baseline of a row-recovery attacker: with the
coordinator's view it can do no better than a guess from public information (batch
sizes, the identity initialisation), because that view is a function of the batch sizes
only.
"""

from __future__ import annotations

import numpy as np
import pytest

import smpc
from fedsc.errors import FedscInputError
from fedsc.methods.scbatchprox import (
    REVEALS_PAPER,
    REVEALS_SECURE_ROWS,
    REVEALS_SECURE_ROWS_NOT_PRIVATE,
    ScBatchProx,
    ScBatchProxConfig,
    ScBatchProxFederation,
)
from smpc.crypten_backend import CryptenAggregator

SIZES = {"a": 300, "b": 200, "c": 150}
ROUNDS = 3


def _data(seed: int = 0, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = np.concatenate(
        [rng.normal(i - 1.0, 0.5 + i, size=(n, dim)) for i, n in enumerate(SIZES.values())]
    )
    labels = np.concatenate([[b] * n for b, n in SIZES.items()])
    return z, labels


def _fit(agg, z, labels, secure: bool, seed: int = 1) -> ScBatchProx:
    config = ScBatchProxConfig(rounds=ROUNDS, secure_rows=secure)
    return ScBatchProx.fit(z, labels, agg, config=config, seed=seed, show_progress=False)


class _CoordinatorView:
    """Records what every aggregator call returned to its caller (the coordinator)."""

    def __init__(self, agg: smpc.Aggregator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.returned: list[tuple[str, object]] = []
        for name in ("weighted_mean", "sum", "argmax", "gather", "weighted_mean_to_owners"):
            method = getattr(agg, name)

            def spy(*args, _name=name, _method=method, **kwargs):
                out = _method(*args, **kwargs)
                self.returned.append((_name, out))
                return out

            monkeypatch.setattr(agg, name, spy)


def test_secure_equals_paper_faithful_in_plaintext():
    z, labels = _data()
    with smpc.make_aggregator("plaintext") as agg:
        paper = _fit(agg, z, labels, secure=False)
    with smpc.make_aggregator("plaintext") as agg:
        secure = _fit(agg, z, labels, secure=True)
    assert np.abs(paper.adapter.gamma - 1).max() > 1e-4  # the adapter did move
    # Same mathematics; the sum is grouped differently (theta^t + n_b delta / N instead
    # of (n_b theta' + (N - n_b) theta^t) / N), so equal up to float64 rounding.
    np.testing.assert_allclose(secure.adapter.gamma, paper.adapter.gamma, rtol=0, atol=1e-12)
    np.testing.assert_allclose(secure.adapter.beta, paper.adapter.beta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        secure.transform(z, labels), paper.transform(z, labels), rtol=0, atol=1e-12
    )
    assert paper.reveals == REVEALS_PAPER
    assert secure.reveals == REVEALS_SECURE_ROWS_NOT_PRIVATE  # plaintext: not private
    assert ScBatchProxConfig().secure_rows is False  # the paper's protocol stays the default


def test_secure_crypten_equals_paper_faithful_and_coordinator_sees_only_total(monkeypatch):
    z, labels = _data()
    with smpc.make_aggregator("plaintext") as agg:
        paper = _fit(agg, z, labels, secure=False)
    received: list[tuple[int, dict]] = []
    original = ScBatchProxFederation.receive

    def spy_receive(self, client, owned):
        received.append((client, {k: v.shape for k, v in owned.items()}))
        return original(self, client, owned)

    monkeypatch.setattr(ScBatchProxFederation, "receive", spy_receive)
    with CryptenAggregator(transport="threads") as agg:
        view = _CoordinatorView(agg, monkeypatch)
        secure = _fit(agg, z, labels, secure=True)
        entries = agg.ledger.entries
    np.testing.assert_allclose(
        secure.transform(z, labels), paper.transform(z, labels), rtol=0, atol=1e-6
    )
    # The coordinator's view: one owner-revealed mean per round, returning sum w only.
    n_train = sum(round(0.9 * n) for n in SIZES.values())
    assert [name for name, _ in view.returned] == ["weighted_mean_to_owners"] * ROUNDS
    assert all(out == pytest.approx(n_train, abs=1e-6) for _, out in view.returned)
    assert [e.op for e in entries] == ["weighted_mean_to_owners"] * ROUNDS
    for e in entries:
        assert e.private and e.coordinator_received == {"sum_weights": []}
        assert e.client_received == {
            f"client[{b}]": {"owned": [2 * 8], "sum_weights": []} for b in range(len(SIZES))
        }
    # Each client received, each round, its own gamma and beta row and nothing else.
    assert received == [(b, {"gamma": (1, 8), "beta": (1, 8)}) for b in range(3)] * ROUNDS
    assert secure.history == [{"round": r} for r in range(ROUNDS)]  # no metric revealed
    assert secure.reveals == REVEALS_SECURE_ROWS


def test_coordinator_view_depends_on_batch_sizes_only(monkeypatch):
    """Two datasets, same batch sizes, different rows: identical coordinator views.

    So a row-recovery attacker given the coordinator's view outputs the same guess for
    both, and does no better than the public-information baseline (e.g. the identity
    rows gamma = 1, beta = 0, or any guess from the batch sizes alone).
    """
    views, rows = [], []
    for seed in (0, 7):
        z, labels = _data(seed)
        z = z * (1.0 + seed)  # really different data
        with CryptenAggregator(transport="threads") as agg:
            view = _CoordinatorView(agg, monkeypatch)
            model = _fit(agg, z, labels, secure=True)
            ledger = [(e.op, e.coordinator_received) for e in agg.ledger.entries]
        views.append(([(n, round(float(o), 6)) for n, o in view.returned], ledger))
        rows.append(model.adapter.gamma.copy())
    assert views[0] == views[1]
    assert np.abs(rows[0] - rows[1]).max() > 1e-4


def test_paper_faithful_view_reveals_rows():
    """Contrast: the paper's coordinator solves the averaged row for the client's row."""
    z, labels = _data()
    with smpc.make_aggregator("plaintext") as agg:
        view = _CoordinatorView(agg, pytest.MonkeyPatch())
        model = _fit(agg, z, labels, secure=False)
    config = ScBatchProxConfig(rounds=ROUNDS)
    n = np.array([round(config.train_fraction * k) for k in SIZES.values()], dtype=float)
    means = [out for name, out in view.returned if name == "weighted_mean" and "gamma" in out]
    before = np.ones_like(model.adapter.gamma)
    after = means[0]["gamma"].numpy()
    recovered = (n.sum() * after - (n.sum() - n)[:, None] * before) / n[:, None]
    assert np.abs(recovered - 1).max() > 1e-4  # a client's trained row, recovered exactly


def test_secure_rows_continual_training_matches_paper():
    z, labels = _data()
    first = np.isin(labels, ["a", "b"])
    out = []
    for secure in (False, True):
        with smpc.make_aggregator("plaintext") as agg:
            model = _fit(agg, z[first], labels[first], secure=secure)
            model.extend(z[~first], labels[~first], agg, show_progress=False)
        out.append(model.transform(z, labels))
    np.testing.assert_allclose(out[1], out[0], rtol=0, atol=1e-12)


def test_secure_rows_refuses_another_strategy():
    z, labels = _data()
    with smpc.make_aggregator("plaintext") as agg, pytest.raises(FedscInputError):
        ScBatchProx.fit(
            z,
            labels,
            agg,
            config=ScBatchProxConfig(rounds=1, secure_rows=True),
            strategy="fedavgm",
            show_progress=False,
        )


@pytest.mark.parametrize(
    ("secure", "backend", "label"),
    [
        (False, "plaintext", REVEALS_PAPER),
        (True, "plaintext", REVEALS_SECURE_ROWS_NOT_PRIVATE),
        (True, CryptenAggregator, REVEALS_SECURE_ROWS),
    ],
)
def test_uns_says_what_the_variant_reveals(secure, backend, label):
    import anndata as ad

    import fedsc.tl

    z, labels = _data()
    adata = ad.AnnData(obs={"batch": labels})
    adata.obsm["X_pca"] = z
    agg = backend(transport="threads") if backend is CryptenAggregator else backend
    fedsc.tl.scbatchprox(
        adata, batch_key="batch", use_rep="X_pca", backend=agg, rounds=1, secure_rows=secure
    )
    if not isinstance(agg, str):
        agg.close()
    assert adata.uns["scbatchprox"]["reveals"] == label
    assert adata.uns["scbatchprox"]["params"]["secure_rows"] is secure
