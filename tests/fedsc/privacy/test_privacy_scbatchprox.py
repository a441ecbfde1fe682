"""Attacks on scBatchProx over the bundled pancreas data (PCA 40, 5 clients).

Numbers are reported in docs/privacy.md (``python -m fedsc.privacy.demo``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsc.privacy import ATTACKS, Truth, observer_view, run_attacks
from fedsc.privacy.runs import record_scbatchprox
from fedsc.privacy.scbatchprox_moments import client_moments
from fedsc.privacy.scbatchprox_rows import scbatchprox_row_recovery


@pytest.fixture(scope="module")
def plain_run(panc_pca):
    z, labels = panc_pca
    record, model = record_scbatchprox(z, labels, "plaintext", seed=0)
    return record, model


@pytest.fixture(scope="module")
def crypten_run(panc_pca):
    z, labels = panc_pca
    record, model = record_scbatchprox(z, labels, "crypten", seed=0, parties=3)
    return record, model


def _metric(rows, metric):
    sel = rows[rows["metric"] == metric]
    assert len(sel), metric
    return sel


def _check_row_recovery(record):
    rows = scbatchprox_row_recovery(observer_view(record, "coordinator"), record)
    err = _metric(rows, "row_relative_error")
    assert len(err) == 5 * 7  # every client, every round
    assert err["value"].max() <= 1e-6
    # the public-only guess (previous global row) is far worse
    assert err["chance"].min() >= 1e3 * err["value"].max()
    cos = _metric(rows, "update_cosine")["value"]
    assert cos.min() >= 1 - 1e-9
    return rows


def test_row_recovery_exact_under_plaintext(plain_run):
    record, _ = plain_run
    rows = _check_row_recovery(record)
    assert _metric(rows, "update_relative_error")["value"].max() <= 1e-9


def test_row_recovery_exact_under_crypten(crypten_run):
    record, _ = crypten_run
    assert record.private and record.backend == "crypten"
    rows = _check_row_recovery(record)
    # only fixed-point rounding (2^-24 per value) remains, even on the small update
    assert _metric(rows, "update_relative_error")["value"].max() <= 1e-5
    assert (_metric(rows, "weights_known")["value"] == 0).all()  # only W was revealed


def test_crypten_coordinator_view_holds_only_aggregates(crypten_run):
    record, _ = crypten_run
    view = observer_view(record, "coordinator")
    assert all(o.contributions is None and o.shares is None for o in view.operations)
    assert all(o.weights is None for o in view.operations)
    fedavg = view.select(tag="fedavg")
    assert len(fedavg) == 7 and all(o.total_weight == 450.0 for o in fedavg)
    # the truth is in the record, not in the view
    assert record.operations[0].contributions is not None


def test_party_shares_reveal_nothing_below_the_collusion_threshold(crypten_run):
    record, _ = crypten_run
    truth = Truth(record)
    for view in (
        observer_view(record, "party", party=1),
        observer_view(record, "colluding_parties", parties=(0, 2)),
    ):
        assert all(o.aggregate is None and o.contributions is None for o in view.operations)
        rows = run_attacks(view, truth, ["party_shares"])
        corr = _metric(rows, "share_correlation")["value"]
        assert len(corr) == 5 * 7
        assert corr.abs().mean() < 0.1  # ~1/sqrt(401) for uniform shares
        assert _metric(rows, "share_relative_error")["value"].min() > 1e3
    everyone = observer_view(record, "colluding_parties", parties=(0, 1, 2))
    rows = run_attacks(everyone, truth, ["party_shares"])
    assert _metric(rows, "share_correlation")["value"].min() > 1 - 1e-9


def test_moment_inference_beats_chance(plain_run, panc_pca):
    record, _ = plain_run
    z, labels = panc_pca
    truth = Truth(record, client_moments(z, labels, record.public["config"], seed=0))
    rows = run_attacks(observer_view(record, "coordinator"), truth, ["scbatchprox_moments"])
    mean_err = _metric(rows, "mean_relative_error")
    assert (mean_err["value"] < 0.1).all() and (mean_err["chance"] > 0.5).all()
    corr = _metric(rows, "mean_correlation")
    assert corr["value"].min() > 0.99 and corr["chance"].max() < 0.5
    second = _metric(rows, "second_relative_error")
    assert (second["value"] < second["chance"] / 10).all()


def test_client_recovers_other_clients_rows(plain_run):
    # A client receives the global tables every round; with public cell counts it
    # recovers every other client's row, like the coordinator.
    record, _ = plain_run
    view = observer_view(record, "client", client=0, public_weights=True)
    rows = run_attacks(view, Truth(record), ["scbatchprox_rows"])
    err = _metric(rows, "row_relative_error")
    assert len(err) == 5 * 7 and err["value"].max() <= 1e-6


@pytest.fixture(scope="module")
def unequal_run(panc_pca):
    # 36, 50, 63, 76, 90 training cells: equal shares W / K is a wrong guess
    z, labels = panc_pca
    keep = np.concatenate(
        [np.flatnonzero(labels == b)[: 40 + 15 * k] for k, b in enumerate(sorted(set(labels)))]
    )
    record, _ = record_scbatchprox(z[keep], labels[keep], "plaintext", seed=0)
    return record


def test_hidden_unequal_weights_equal_share_guess_gets_the_direction_only(unequal_run):
    record = unequal_run
    hidden = run_attacks(
        observer_view(record, "coordinator", public_weights=False),
        Truth(record),
        ["scbatchprox_rows"],
    )
    assert _metric(hidden, "update_cosine")["value"].min() >= 1 - 1e-9  # direction exact
    assert _metric(hidden, "update_relative_error")["value"].max() > 0.1  # scale guessed
    known = run_attacks(observer_view(record, "coordinator"), Truth(record), ["scbatchprox_rows"])
    assert _metric(known, "row_relative_error")["value"].max() <= 1e-6


def test_hidden_weights_are_recovered_from_W_alone(unequal_run):
    record = unequal_run
    view = observer_view(record, "coordinator", public_weights=False)
    rows = run_attacks(view, Truth(record), ["scbatchprox_weights"])
    est = _metric(rows, "estimated_weight")["value"].to_numpy()
    np.testing.assert_array_equal(est, record.operations[0].weights)  # every count exact
    assert _metric(rows, "weight_relative_error")["chance"].max() > 0.3  # W / K is wrong
    err = _metric(rows, "row_relative_error")
    assert err["value"].max() <= 1e-6 and err["chance"].max() > 1e-4


def test_hidden_weights_under_crypten(crypten_run):
    record, _ = crypten_run
    rows = run_attacks(observer_view(record, "coordinator"), Truth(record), ["scbatchprox_weights"])
    assert (_metric(rows, "estimated_weight")["value"] == 90).all()
    assert _metric(rows, "row_relative_error")["value"].max() <= 1e-6


def test_registry_and_views_without_what_an_attack_needs(plain_run):
    from fedsc.privacy import attack_record

    record, _ = plain_run
    sweep = attack_record(record, attacks=["scbatchprox_rows"], public_weights=True)
    assert set(sweep["observer"]) == {"coordinator", "client"}  # the others hold no rounds
    assert {
        "scbatchprox_rows",
        "scbatchprox_moments",
        "scbatchprox_weights",
        "party_shares",
    } <= set(ATTACKS)
    reader = observer_view(record, "output_reader")
    assert run_attacks(reader, Truth(record)).empty  # the final tables alone: no round to solve
    no_truth = run_attacks(observer_view(record, "coordinator"), None, ["scbatchprox_rows"])
    assert set(no_truth["metric"]) == {"weights_known", "update_norm"}
    with pytest.raises(ValueError, match="unknown attack"):
        run_attacks(reader, None, ["nope"])


def test_mechanisms_clip_keeps_the_direction_and_noise_degrades_the_rows(panc_pca):
    from fedsc.privacy.demo import ClientNoise

    z, labels = panc_pca
    clipped, _ = record_scbatchprox(
        z, labels, "plaintext", mechanisms=[{"name": "clip", "max_norm": 1e-3}]
    )
    assert clipped.inputs and clipped.released  # truth before mechanisms is recorded
    assert not np.array_equal(clipped.inputs[0], clipped.operations[0].contributions)
    rows = run_attacks(observer_view(clipped, "coordinator"), Truth(clipped), ["scbatchprox_rows"])
    assert _metric(rows, "update_cosine")["value"].min() >= 1 - 1e-9  # scaled, not hidden
    assert _metric(rows, "update_relative_error")["value"].min() > 0.1
    noisy, _ = record_scbatchprox(
        z, labels, "plaintext", mechanisms=[ClientNoise(1e-3)], mechanism_seed=0
    )
    rows = run_attacks(observer_view(noisy, "coordinator"), Truth(noisy), ["scbatchprox_rows"])
    err = _metric(rows, "update_relative_error")["value"]
    assert err.min() > 1  # noise of ~2x the per-value update: worse than the public guess


def test_exposure_from_the_ledger(plain_run, crypten_run):
    from fedsc.privacy.threat_model import MEASURED_BY, clear_contributions, exposure

    assert clear_contributions(plain_run[1].ledger) == 5 * 14  # every client, every op
    assert clear_contributions(crypten_run[1].ledger) == 0
    table = exposure(crypten_run[1].ledger)
    coord = table[(table["observer"] == "coordinator") & (table["tag"] == "fedavg")]
    assert set(coord["receives"]) == {"sum_weighted", "sum_weights"}
    assert set(table["observer"]) == {"coordinator", "party[0]", "party[1]", "party[2]", "client"}
    assert all(name in ATTACKS for names in MEASURED_BY.values() for name in names)


def test_share_relative_error_of_a_zero_vector_is_infinite_without_warnings():
    import warnings

    from fedsc.privacy.party_shares import relative_error

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old floor division overflowed with a warning
        assert relative_error(np.array([3e14, -2e14]), np.zeros(2)) == math.inf
        assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
        assert relative_error(np.array([3.0, 4.0]), np.array([0.0, 0.0]) + 1e-310) == math.inf
        assert relative_error(np.array([1.0, 1.0]), np.array([1.0, 2.0])) == 1 / np.sqrt(5)
