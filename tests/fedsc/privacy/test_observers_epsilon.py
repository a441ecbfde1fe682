"""ε per observer read off the ledger, checked against dp_accounting composed by hand.

Each observer's noise multiplier follows from what the ledger says it received: the
aggregate (σ·√(n/m)), one client's noised contribution (σ/√m), or the aggregate less a
client's own noise share (σ·√((n-1)/m)); m = clients of the operation or ``min_honest``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import dp_accounting
import numpy as np
import pandas as pd
import pytest
from dp_accounting import pld, rdp

import smpc
from fedsc.errors import FedscInputError
from fedsc.methods import get_method
from fedsc.privacy.accounting import (
    CLIENT_RELATION,
    LEDGER_OBSERVERS,
    DeltaWarning,
    DPConfig,
    client_level_from_ledger,
    delta_check,
    joint_cell_epsilon,
    noise_multiplier_for,
)
from fedsc.privacy.run_dp import check_run_dp, resolve_run_dp, run_dp_info
from smpc.mechanisms.gaussian import GaussianDP

DELTA = 0.01


def _by_hand(multipliers: list[float], delta: float = DELTA, accountant: Any = None) -> float:
    """ε of one Gaussian release per multiplier, composed by dp_accounting directly."""
    acc = rdp.RdpAccountant() if accountant is None else accountant
    for s in multipliers:
        acc.compose(dp_accounting.GaussianDpEvent(s))
    return float(acc.get_epsilon(delta))


def _entry(
    n: int,
    sigma: float,
    *,
    rnd: int | None = 0,
    tag: str = "fedavg",
    op: str = "weighted_mean",
    private: bool = True,
    parties: int = 3,
    **mech: Any,
) -> dict[str, Any]:
    """One ledger entry as smpc writes it (to_dict form), with a gaussian mechanism."""
    received = (
        {"sum_weighted": [4], "sum_weights": []}
        if private
        else {**{f"client[{i}]": [4] for i in range(n)}, "weights": [n]}
    )
    return {
        "op": op,
        "round": rnd,
        "tag": tag,
        "n_clients": n,
        "n_values": 4,
        "bytes_to_party": [100] * parties,
        "private": private,
        "coordinator_received": received,
        "mechanisms": [GaussianDP(sigma, 1.0, **mech).describe()],
    }


def _ledger(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"entries": list(entries)}


@pytest.mark.parametrize(
    ("target", "low", "high"), [(1, 2.4, 2.85), (4, 10.6, 12.1), (16, 51, 55.3)]
)
def test_plaintext_coordinator_faces_sigma_over_sqrt_k(target, low, high):
    # K = 5, 2 rounds, delta = 0.01: sigma calibrated to the target for the aggregate; the
    # plaintext coordinator sees every client's update with sigma / sqrt(5) of noise
    k, rounds = 5, 2
    sigma = noise_multiplier_for(target, rounds, 1.0, DELTA)
    agg = smpc.make_aggregator(
        "plaintext",
        mechanisms=[{"name": "gaussian", "noise_multiplier": sigma, "clip": 1.0}],
        mechanism_seed=0,
    )
    xs = [np.full(4, 0.1 * i) for i in range(k)]
    for r in range(rounds):
        with agg.ledger.scope(r, "fedavg"):
            agg.weighted_mean(xs, [1] * k, reference=np.zeros(4))
    info = run_dp_info(DPConfig(sigma, 1.0, DELTA), agg.ledger.to_dict(), None)
    assert info is not None
    by = info["epsilon_by_observer"]
    coordinator = _by_hand([sigma / math.sqrt(k)] * rounds)
    assert by["coordinator"] == pytest.approx(coordinator, rel=1e-9)
    assert low <= by["coordinator"] <= high
    assert by["output"] == pytest.approx(_by_hand([sigma] * rounds)) and by["output"] <= target
    assert info["dp_epsilon"] == by["coordinator"] and info["dp_observer"] == "coordinator"
    # no computation parties under plaintext: stated as such, not as a number
    assert by["party"] is None and by["colluding_parties"] is None
    assert info["observers"]["party"]["applicable"] is False
    assert info["relation"] == CLIENT_RELATION and "zero-out" in info["relation"]


def test_every_observer_against_dp_accounting():
    sigma, k, rounds = 2.0, 5, 3
    crypten3 = _ledger(*(_entry(k, sigma, rnd=r) for r in range(rounds)))
    out = {
        o: client_level_from_ledger(crypten3, DELTA, observer=o).epsilon for o in LEDGER_OBSERVERS
    }
    on_sum = _by_hand([sigma] * rounds)
    # three-party additive sharing: one party and two colluding see shares + the output
    for o in ("output", "coordinator", "party", "colluding_parties"):
        assert out[o] == pytest.approx(on_sum), o
    # a client subtracts its own share: sigma * sqrt((K - 1) / K) left
    assert out["client"] == pytest.approx(_by_hand([sigma * math.sqrt((k - 1) / k)] * rounds))
    assert out["client"] > on_sum
    per_client = _by_hand([sigma / math.sqrt(k)] * rounds)
    # two parties: two colluding parties hold every share and see each client's update
    crypten2 = _ledger(*(_entry(k, sigma, rnd=r, parties=2) for r in range(rounds)))
    assert client_level_from_ledger(crypten2, DELTA, observer="colluding_parties").epsilon == (
        pytest.approx(per_client)
    )
    assert client_level_from_ledger(crypten2, DELTA, observer="party").epsilon == (
        pytest.approx(on_sum)
    )
    # debug mode (not private, parties present): every party sees each client's update
    debug = _ledger(*(_entry(k, sigma, rnd=r, private=False) for r in range(rounds)))
    for o in ("coordinator", "party", "colluding_parties"):
        acct = client_level_from_ledger(debug, DELTA, observer=o)
        assert acct.epsilon == pytest.approx(per_client) and acct.views == {"per_client": rounds}
    # min_honest = 2: each client adds sigma^2 C^2 / 2, the sum carries sigma * sqrt(5 / 2)
    honest = _ledger(*(_entry(k, sigma, rnd=r, min_honest=2) for r in range(rounds)))
    assert client_level_from_ledger(honest, DELTA).epsilon == pytest.approx(
        _by_hand([sigma * math.sqrt(k / 2)] * rounds)
    )
    assert client_level_from_ledger(honest, DELTA, observer="client").epsilon == pytest.approx(
        _by_hand([sigma * math.sqrt((k - 1) / 2)] * rounds)
    )


def test_run_json_lists_every_observer_and_the_strongest():
    sigma, k = 2.0, 5
    info = run_dp_info(
        DPConfig(sigma, 1.0, DELTA), _ledger(_entry(k, sigma), _entry(k, sigma, rnd=1)), None
    )
    assert info is not None
    assert set(info["epsilon_by_observer"]) == set(LEDGER_OBSERVERS) == set(info["observers"])
    assert info["dp_epsilon_by_observer"] == info["epsilon_by_observer"]
    # under secure aggregation a client, which knows its own noise, sees the most
    assert info["dp_observer"] == "client"
    assert info["dp_epsilon"] == max(info["epsilon_by_observer"].values())
    assert info["observers"]["client"]["noise_multipliers"] == {
        f"{sigma * math.sqrt(4 / 5):.6g}": 2
    }


def test_dropped_clients_raise_epsilon():
    # noise shares are drawn for the clients of each operation (the ledger's n_clients):
    # fewer clients leave less of the others' noise for a client, and under min_honest
    # less noise on the aggregate; without min_honest the aggregate keeps sigma
    sigma = 2.0
    full = _ledger(_entry(5, sigma, rnd=0), _entry(5, sigma, rnd=1))
    dropped = _ledger(_entry(5, sigma, rnd=0), _entry(3, sigma, rnd=1))
    client_full = client_level_from_ledger(full, DELTA, observer="client").epsilon
    client_drop = client_level_from_ledger(dropped, DELTA, observer="client").epsilon
    assert client_drop > client_full
    assert client_drop == pytest.approx(
        _by_hand([sigma * math.sqrt(4 / 5), sigma * math.sqrt(2 / 3)])
    )
    assert client_level_from_ledger(dropped, DELTA).epsilon == pytest.approx(
        client_level_from_ledger(full, DELTA).epsilon
    )
    honest_full = _ledger(*(_entry(5, sigma, rnd=r, min_honest=2) for r in range(2)))
    honest_drop = _ledger(
        _entry(5, sigma, rnd=0, min_honest=2), _entry(3, sigma, rnd=1, min_honest=2)
    )
    drop = client_level_from_ledger(honest_drop, DELTA).epsilon
    assert drop == pytest.approx(_by_hand([sigma * math.sqrt(5 / 2), sigma * math.sqrt(3 / 2)]))
    assert drop > client_level_from_ledger(honest_full, DELTA).epsilon
    # a client alone in an operation learns nothing about another client from it
    alone = client_level_from_ledger(_ledger(_entry(1, sigma)), DELTA, observer="client")
    assert alone.releases == {} and alone.epsilon == 0.0


def test_unnoised_releases_are_infinite_for_every_observer():
    entry = _entry(5, 2.0, rnd=None, tag="correction/presence", op="sum")
    entry["mechanisms"] = []  # the gaussian mechanism passes the correction through
    info = run_dp_info(DPConfig(2.0, 1.0, DELTA), _ledger(entry), None)
    assert info is not None and info["dp_epsilon"] is None
    for o in ("output", "coordinator", "party", "colluding_parties", "client"):
        assert client_level_from_ledger(_ledger(entry), DELTA, observer=o).epsilon == math.inf
        assert info["epsilon_by_observer"][o] is None
        assert "without noise" in info["observers"][o]["why_no_epsilon"]
    zero = _entry(5, 0.0)  # a record of sigma = 0
    assert client_level_from_ledger(_ledger(zero), DELTA, observer="client").epsilon == math.inf
    with pytest.raises(FedscInputError, match="records no n_clients"):
        client_level_from_ledger(_ledger({**_entry(5, 1.0), "n_clients": None}), DELTA)


def test_zero_out_relation_matches_the_accountants():
    # the gaussian mechanism's relation is zero-out (dp_accounting: REPLACE_SPECIAL);
    # unsampled, it is accounted as add-or-remove-one with sensitivity C (RDP and PLD)
    sigma = 3.0
    ledger = _ledger(_entry(4, sigma), _entry(4, sigma, rnd=1))
    for name, make in (("rdp", rdp.RdpAccountant), ("pld", pld.PLDAccountant)):
        ours = client_level_from_ledger(ledger, DELTA, accountant=name).epsilon
        zero_out = make(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
        assert ours == pytest.approx(_by_hand([sigma, sigma], accountant=zero_out), rel=1e-6)
    # one cell of a client: its clipped update moves by up to 2C, the multiplier halves;
    # PLD's replace-one Gaussian (sensitivity 2) agrees
    cell = client_level_from_ledger(ledger, DELTA, accountant="pld", unit="cell").epsilon
    replace_one = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    assert cell == pytest.approx(_by_hand([sigma, sigma], accountant=replace_one), rel=1e-6)


def test_joint_cell_epsilon_is_the_smaller_bound():
    sigma = 3.0
    plain = _ledger(*(_entry(5, sigma, rnd=r, private=False, parties=0) for r in range(2)))
    from_mechanism = _by_hand([sigma / math.sqrt(5) / 2] * 2)  # coordinator, cell: halved
    assert joint_cell_epsilon(100.0, plain, DELTA, observer="coordinator") == pytest.approx(
        from_mechanism
    )
    assert joint_cell_epsilon(0.5, plain, DELTA, observer="coordinator") == 0.5
    assert joint_cell_epsilon(None, plain, DELTA, observer="output") == pytest.approx(
        _by_hand([sigma / 2] * 2)
    )
    assert math.isnan(joint_cell_epsilon(0.5, plain, DELTA, observer="party"))
    # no client-level noise: DP-SGD's bound alone
    no_noise = _ledger({**_entry(5, sigma), "mechanisms": []})
    assert joint_cell_epsilon(0.5, no_noise, DELTA) == 0.5
    # noised metrics are outside DP-SGD's coverage: only the mechanism's bound holds
    metrics = _entry(5, sigma, tag="metrics", metrics="noise", metrics_clip=1.0)
    mixed = _ledger(_entry(5, sigma), metrics)
    assert joint_cell_epsilon(0.01, mixed, DELTA) == pytest.approx(_by_hand([sigma / 2] * 2))


def test_dp_uncovered_lists_every_release_outside_the_noise():
    # a client-level ledger as FedscGen writes it: rounds, metrics suppressed, correction
    k, sigma = 3, 2.0
    agg = smpc.make_aggregator(
        "plaintext",
        mechanisms=[{"name": "gaussian", "noise_multiplier": sigma, "clip": 1.0}],
        mechanism_seed=0,
    )
    xs = [np.full(3, float(i)) for i in range(k)]
    with agg.ledger.scope(0, "fedavg"):
        agg.weighted_mean(xs, [10, 20, 30], reference=np.zeros(3))
    with agg.ledger.scope(0, "metrics"):
        agg.weighted_mean([{"loss": 1.0}] * k, [10, 20, 30])
    with agg.ledger.scope(None, "correction/presence"):
        agg.sum(xs)
    with agg.ledger.scope(None, "correction/dominant"):
        agg.argmax(xs)
    with agg.ledger.scope(None, "correction/mean_latent"):
        agg.sum(xs)
    ledger = agg.ledger.to_dict()
    info = run_dp_info(DPConfig(sigma, 1.0, DELTA), ledger, None)
    assert info is not None
    expected = {
        "weighted_mean:fedavg:weights",
        "weighted_mean:metrics:weights",
        "sum:correction/presence",
        "argmax:correction/dominant",
        "sum:correction/mean_latent",
        "preprocessing:pooled",
        "evaluation:pooled",
    }
    assert set(info["dp_uncovered"]) == expected == set(info["dp_uncovered_notes"])
    assert "cell counts" in info["dp_uncovered_notes"]["weighted_mean:fedavg:weights"]
    # cell level: DP-SGD covers the rounds' states; the rest is listed the same way
    cell_agg = smpc.make_aggregator("plaintext")
    with cell_agg.ledger.scope(0, "fedavg"):
        cell_agg.weighted_mean(xs, [10, 20, 30])
    with cell_agg.ledger.scope(None, "correction/presence"):
        cell_agg.sum(xs)
    adata = ad.AnnData(np.zeros((2, 2)))
    adata.uns["fedscgen"] = {
        "dp": {"epsilon": 3.0, "noise_multiplier": 1.2, "steps": 40, "sampling_rate": 0.1}
    }
    cell = run_dp_info(DPConfig(1.2, 1.0, 1e-4, level="cell"), cell_agg.ledger.to_dict(), adata)
    assert cell is not None
    assert set(cell["dp_uncovered"]) == {
        "weighted_mean:fedavg:weights",
        "sum:correction/presence",
        "preprocessing:pooled",
        "evaluation:pooled",
    }
    assert cell["epsilon_by_observer"] == {
        "output": 3.0,
        "coordinator": 3.0,
        "party": None,
        "colluding_parties": None,
        "client": 3.0,
    }
    assert cell["dp_epsilon"] == 3.0 and cell["relation"].startswith("cell:")
    adata.uns["fedscgen"]["dp"]["relation"] = "cell: replace-one (n public)"
    cell = run_dp_info(DPConfig(1.2, 1.0, 1e-4, level="cell"), cell_agg.ledger.to_dict(), adata)
    assert cell is not None and cell["relation"] == "cell: replace-one (n public)"


def test_both_levels_in_one_run_are_refused():
    spec = get_method("fedscgen")
    for dp in (
        {"level": ["client", "cell"], "noise_multiplier": 1.0},
        {"level": "cell", "noise_multiplier": 1.0, "client": {"noise_multiplier": 2.0}},
    ):
        with pytest.raises(FedscInputError, match=r"one level per run.*joint_cell_epsilon"):
            check_run_dp(dp, spec)
    assert check_run_dp({"level": "cell", "noise_multiplier": 1.0}, spec) is not None


@dataclass
class _Cfg:
    dp: dict[str, Any] | None
    params: dict[str, Any] = field(default_factory=lambda: {"rounds": 2})
    batch_key: str = "batch"
    holdout: tuple[str, ...] = ()


def _three_clients() -> ad.AnnData:
    obs = pd.DataFrame(
        {"batch": np.repeat(["a", "b", "c"], 10)}, index=[f"c{i}" for i in range(30)]
    )
    return ad.AnnData(np.zeros((30, 2)), obs=obs)


def test_delta_policy_warns_above_one_tenth_of_one_over_n():
    assert delta_check(0.02, 5, "clients") is None  # the experiments: 0.01 with 5 clients
    note = delta_check(0.1, 3, "clients")
    assert note is not None and "n*delta = 0.3" in note and "1/(10 n) = 0.0333" in note
    adata = _three_clients()
    spec = get_method("scbatchprox")
    dp = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0}
    with pytest.warns(DeltaWarning, match="not well below"):
        resolve_run_dp(_Cfg({**dp, "delta": 0.1}), adata, spec)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeltaWarning)
        resolve_run_dp(_Cfg({**dp, "delta": 0.01}), adata, spec)  # type: ignore[arg-type]
    with pytest.raises(FedscInputError, match="not below 1/n"):
        resolve_run_dp(_Cfg({**dp, "delta": 0.5}), adata, spec)  # type: ignore[arg-type]
    # run.json records the check for the clients that trained
    info = run_dp_info(DPConfig(1.0, 1.0, 0.1), _ledger(_entry(3, 1.0)), None)
    assert info is not None and "not well below" in info["delta_check"]


def test_client_dp_with_secure_rows_is_refused_before_training():
    adata, spec = _three_clients(), get_method("scbatchprox")
    dp = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0, "delta": 0.01}
    # owner-revealed rows never pass the mechanism: refused before training
    with pytest.raises(FedscInputError, match="secure_rows cannot run together"):
        resolve_run_dp(
            _Cfg(dp, params={"rounds": 2, "secure_rows": True}),  # type: ignore[arg-type]
            adata,
            spec,
        )
