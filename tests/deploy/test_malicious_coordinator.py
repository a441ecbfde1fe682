"""A coordinator that deviates from the protocol, played against real sites and parties.

The sites are :class:`fedsc.deploy.site.Site` objects on their own h5ad files, answering
through the code a site's ClientApp runs (``site_worker.answer`` then
``client_app.seal_for_parties``); the parties are :class:`smpc.party.PartyLoop` s (in
threads, additions only), which open the sealed shares with their own secrets. Only the
Flower transport is left out (tests/deploy/test_deployment_crypten.py runs it). Each
attack of issue 19 (weights (1, 0), a subset of sites, the same step twice, a replayed or
re-targeted sealed share, a pairwise argmax) is refused with a message naming the check,
and the honest run through the same code still gives the simulation's model.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _sites import SiteFleet

from fedsc.deploy import scbatchprox as deployed
from fedsc.deploy.aggregators import DeployedPlaintext
from fedsc.deploy.crypten import DeployedCrypten
from fedsc.deploy.site import RefusedRequest, step_phase, step_slot
from fedsc.errors import FedscInputError
from fedsc.methods.scbatchprox import ScBatchProx, ScBatchProxConfig
from fedsc.methods.scbatchprox_driver import training_cells
from smpc import messages as msg
from smpc import sealed
from smpc.channel import in_process_pair
from smpc.crypten_backend import CryptenAggregator
from smpc.party import PartyLoop

SITES = ["site_a", "site_b", "site_c"]
SECRET = bytes(range(32))
PARTIES = 3
DIMS = 4
CONFIG = ScBatchProxConfig(rounds=2, local_epochs=1, batch_size=32)
PARAMS = {
    "config": CONFIG.to_dict(),
    "seed": 3,
    "batch_key": "batch",
    "embedding_key": "X_pca",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One small embedding per site (its own h5ad), shifted per site like batches."""
    root = tmp_path_factory.mktemp("malicious")
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(SITES):
        n = 40 + 10 * i
        z = rng.normal(size=(n, DIMS)) * (1 + 0.2 * i) + i
        adata = ad.AnnData(
            np.zeros((n, 1), np.float32),
            obs=pd.DataFrame({"batch": [name] * n}, index=[f"{name}-{j}" for j in range(n)]),
        )
        adata.obsm["X_pca"] = z
        adata.write_h5ad(root / f"{name}.h5ad")
        keys = [sealed.client_key(sealed.party_secret(SECRET, r), name) for r in range(PARTIES)]
        (root / f"party-keys-{name}").write_text("\n".join(k.hex() for k in keys))
        out[name] = root / f"{name}.h5ad"
    return out


@pytest.fixture(autouse=True)
def party_secret(monkeypatch):
    """The parties' secret (each party derives its own from it); sites hold only keys."""
    monkeypatch.setenv(sealed.SECRET_ENV, SECRET.hex())
    monkeypatch.delenv(sealed.AGREED_ENV, raising=False)


def _request(step: str, params: dict[str, Any], names: list[str], name: str, **weights) -> dict:
    """The parameters a CrypTen coordinator sends ``name`` (weights: site -> weight)."""
    context = sealed.make_context(
        "op-" + step + str(sorted(weights.items())) + str(names),
        names,
        step_slot(step, params),
        weights or None,
        phase=step_phase(step),
    )
    out = {
        **params,
        "transport": "crypten",
        "context": context,
        "bits": 24,
        "parties": PARTIES,
        "site_name": name,
    }
    if weights:
        out["weight"] = float(weights[name])
    return out


def _update(fleet: SiteFleet, round_index: int = 0) -> dict[str, Any]:
    """Round ``round_index``'s update parameters and arrays (identity tables, as round 0)."""
    n_obs = {n: int(h["n_obs"]) for n, h in fleet.hello.items()}
    n_train = training_cells(n_obs, sorted(n_obs), CONFIG.train_fraction, 3)
    return {"params": {**PARAMS, "n_train": n_train, "round": round_index}, "n_train": n_train}


def _tables() -> dict[str, np.ndarray]:
    return {"gamma": np.ones((len(SITES), DIMS)), "beta": np.zeros((len(SITES), DIMS))}


def _ask_update(fleet, name, round_index, names, **weights):
    base = _update(fleet, round_index)["params"]
    params = _request(
        "scbatchprox/update", {**base, "index": SITES.index(name)}, names, name, **weights
    )
    return fleet.answer(name, "scbatchprox/update", params, _tables())


# --------------------------------------------------------------------- the honest run
def test_the_honest_deployed_run_through_real_sites_and_parties_matches_simulation(files):
    fleet = SiteFleet(files)
    with CryptenAggregator(transport="threads") as parties:
        agg = DeployedCrypten(fleet, [], backend=parties)  # type: ignore[arg-type]
        record = deployed.run(fleet.hello, agg, fleet.apply, PARAMS)
        ops = [e.op for e in agg.ledger.entries]
    z = np.concatenate([ad.read_h5ad(files[n]).obsm["X_pca"] for n in SITES])
    labels = np.repeat(SITES, [ad.read_h5ad(files[n]).n_obs for n in SITES])
    with CryptenAggregator(transport="threads") as sim_agg:
        sim = ScBatchProx.fit(z, labels, sim_agg, config=CONFIG, seed=3, show_progress=False)
    for key, table in (("gamma", sim.adapter.gamma), ("beta", sim.adapter.beta)):
        np.testing.assert_allclose(record["model_state"][key], table, atol=1e-6)
    assert ops == ["weighted_mean"] * (2 * CONFIG.rounds)  # updates and metrics


# --------------------------------------------------------------------- sites refuse
def test_weights_one_and_zero_are_refused_by_the_sites(files):
    fleet = SiteFleet(files)
    # the target is asked with weight 1 (not its own), the other with weight 0
    with pytest.raises(RefusedRequest, match=r"check 'weight'.*positive"):
        _ask_update(fleet, "site_b", 0, SITES, site_a=1.0, site_b=0.0, site_c=1.0)
    fleet = SiteFleet(files)
    with pytest.raises(RefusedRequest, match=r"check 'weight'.*own weight"):
        _ask_update(fleet, "site_a", 0, SITES, site_a=1.0, site_b=5.0, site_c=5.0)
    # inconsistent: the context's weight for this site is not the one asked for
    fleet = SiteFleet(files)
    params = _request(
        "scbatchprox/update",
        {**_update(fleet)["params"], "index": 0},
        SITES,
        "site_a",
        **{n: 10.0 for n in SITES},
    )
    params["weight"] = 36.0
    with pytest.raises(RefusedRequest, match=r"check 'weight'.*inconsistent"):
        fleet.answer("site_a", "scbatchprox/update", params, _tables())


def test_a_subset_of_the_sites_is_refused(files):
    fleet = SiteFleet(files, agreed_sites=SITES)  # agreed before the run
    own = _update(fleet)["n_train"]
    with pytest.raises(RefusedRequest, match=r"check 'agreed sites'.*subset"):
        _ask_update(fleet, "site_a", 0, SITES[:2], **{n: own[n] for n in SITES[:2]})
    # nothing agreed beforehand: the run's first operation fixes the set
    fleet = SiteFleet(files)
    own = _update(fleet)["n_train"]
    _ask_update(fleet, "site_a", 0, SITES, **own)
    with pytest.raises(RefusedRequest, match=r"check 'agreed sites'.*subset"):
        _ask_update(fleet, "site_a", 1, SITES[:2], **{n: own[n] for n in SITES[:2]})
    with pytest.raises(RefusedRequest, match=r"check 'agreed sites'.*outside"):
        _ask_update(fleet, "site_a", 1, [*SITES, "site_x"], **own, site_x=10.0)


def test_the_same_step_twice_and_steps_off_the_schedule_are_refused(files):
    fleet = SiteFleet(files)
    own = _update(fleet)["n_train"]
    _ask_update(fleet, "site_a", 0, SITES, **own)
    with pytest.raises(RefusedRequest, match="check 'same step twice'"):
        _ask_update(fleet, "site_a", 0, SITES, **own)
    with pytest.raises(RefusedRequest, match=r"check 'schedule'.*next round is 0"):
        _ask_update(fleet, "site_b", 1, SITES, **own)  # site_b has not trained round 0
    metrics = {"method": "scbatchprox", "round": 1, "names": ["recon_loss"]}
    with pytest.raises(RefusedRequest, match=r"check 'schedule'.*before"):
        fleet.answer(
            "site_a", "metrics", _request("metrics", metrics, SITES, "site_a", **own), None
        )
    # a context naming another step than the request (one op's shares reused for another)
    params = _request(
        "scbatchprox/update", {**_update(fleet, 1)["params"], "index": 0}, SITES, "site_a", **own
    )
    params["round"] = 1
    params["context"] = sealed.make_context("x", SITES, "scbatchprox/update#round=0", own)
    with pytest.raises(RefusedRequest, match=r"check 'schedule'.*names step"):
        fleet.answer("site_a", "scbatchprox/update", params, _tables())


# --------------------------------------------------------------------- parties refuse
def _party(agreed: list[str] | None = None):
    """One real party loop (rank 0, additions only) in a thread; the coordinator's end."""
    coordinator, party = in_process_pair()
    loop = PartyLoop(0, party, None, False, agreed)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return coordinator, thread


def _send(coordinator, kind, shares, names, op_id=1) -> Any:
    """Relay sealed shares (``[(name, context, blob)]``) to the party; its answer."""
    coordinator.send(
        msg.Aggregate(
            op_id=op_id, kind=kind, n_clients=len(shares), size=DIMS, share_format="sealed"
        )
    )
    for client, (name, context, blob) in enumerate(shares):
        array = np.frombuffer(blob, dtype=np.uint8)
        coordinator.send(
            msg.SealedShare(client=client, name=name, context=context, nbytes=array.size)
        )
        coordinator.send_array(array)
    assert coordinator.poll(20), "the party did not answer"
    reply = coordinator.recv()
    if isinstance(reply, msg.SharesReceived):
        coordinator.recv()  # Result
        coordinator.recv_array(into=np.empty(DIMS, np.int64))
    return reply


def _seal_for(name, context, rank=0):
    """Site ``name``'s share for party ``rank`` under ``context``, sealed as sites seal."""
    keys = [sealed.client_key(sealed.party_secret(SECRET, r), name) for r in range(PARTIES)]
    blobs = sealed.seal_shares(np.ones(DIMS), keys, client=name, context=context, precision_bits=24)
    return blobs[rank]


def _shares(names, step, op, clients=None, rank=0):
    """Each site's share for party ``rank``, sealed as the site's code seals it."""
    context = sealed.make_context(op, clients or names, step)
    return [(name, context, _seal_for(name, context, rank)) for name in names]


def test_parties_refuse_replays_retargeted_shares_subsets_and_pairwise_argmax():
    coordinator, thread = _party()
    honest = _shares(SITES, "s/0", "op-1")
    assert isinstance(_send(coordinator, "sum", honest, SITES), msg.SharesReceived)
    # replayed: the same sealed shares again
    reply = _send(coordinator, "sum", honest, SITES, op_id=2)
    assert isinstance(reply, msg.Failure) and "check 'replay'" in reply.error
    # re-targeted (the last share, so the refusal ends the operation): party 1's sealed
    # share handed to party 0, or site_a's share passed off as site_c's
    for op_id, forged in enumerate(
        (
            [*_shares(SITES, "s/1", "op-2")[:2], _shares(SITES, "s/1", "op-2", rank=1)[2]],
            [*_shares(SITES, "s/1", "op-3")[:2], ("site_c", *_shares(SITES, "s/1", "op-3")[0][1:])],
        ),
        start=3,
    ):
        reply = _send(coordinator, "sum", forged, SITES, op_id=op_id)
        assert isinstance(reply, msg.Failure) and "does not open" in reply.error
    # inconsistent weights: site_a told other weights than site_b and site_c
    told_a = sealed.make_context(
        "op-w", SITES, "s/w", {"site_a": 1.0, "site_b": 5.0, "site_c": 5.0}
    )
    told_bc = sealed.make_context(
        "op-w", SITES, "s/w", {"site_a": 9.0, "site_b": 5.0, "site_c": 5.0}
    )
    mixed = [
        (n, ctx, _seal_for(n, ctx))
        for n, ctx in zip(SITES, [told_a, told_bc, told_bc], strict=True)
    ]
    reply = _send(coordinator, "sum", mixed, SITES, op_id=9)
    assert isinstance(reply, msg.Failure) and "check 'one context'" in reply.error
    # the same step under a fresh op id
    reply = _send(coordinator, "sum", _shares(SITES, "s/0", "op-4"), SITES, op_id=5)
    assert isinstance(reply, msg.Failure) and "check 'same step twice'" in reply.error
    # a subset (differencing {a, b, c} with {b, c}) and a pairwise argmax
    reply = _send(coordinator, "sum", _shares(SITES[1:], "s/2", "op-5"), SITES[1:], op_id=6)
    assert isinstance(reply, msg.Failure) and "check 'agreed sites'" in reply.error
    assert "difference" in reply.error
    reply = _send(coordinator, "argmax", _shares(SITES[:2], "s/3", "op-6"), SITES[:2], op_id=7)
    assert isinstance(reply, msg.Failure) and "check 'agreed sites'" in reply.error
    assert "pairwise" in reply.error
    coordinator.send(msg.Close())
    thread.join(5)


def test_a_party_with_the_agreed_sites_configured_refuses_a_first_operation_over_a_pair():
    coordinator, thread = _party(agreed=SITES)
    reply = _send(coordinator, "sum", _shares(SITES[:2], "s/0", "op-1"), SITES[:2])
    assert isinstance(reply, msg.Failure) and "check 'agreed sites'" in reply.error
    coordinator.send(msg.Close())
    thread.join(5)


# ------------------------------------------------------------- secure_rows, coordinator view
def test_secure_rows_the_coordinator_receives_no_row_and_no_share_of_a_row(monkeypatch):
    """Everything the coordinator's process reads from the parties in a secure_rows run.

    The clients' side runs in this process too (simulation); the spy records only what
    arrives on the coordinator's ends of the party channels.
    """
    from smpc.channel import InProcessChannel

    arrays: list[np.ndarray] = []
    notes: list[Any] = []
    recv, recv_array = InProcessChannel.recv, InProcessChannel.recv_array

    def spy_recv(self):
        message = recv(self)
        if getattr(self, "coordinator_end", False):
            notes.append(message)
        return message

    def spy_recv_array(self, *args, **kwargs):
        array = recv_array(self, *args, **kwargs)
        if getattr(self, "coordinator_end", False):
            arrays.append(np.array(array))
        return array

    rng = np.random.default_rng(5)
    z = np.concatenate([rng.normal(size=(60, DIMS)) * (1 + i) + i for i in range(3)])
    labels = np.repeat(SITES, 60)
    config = ScBatchProxConfig(rounds=2, local_epochs=1, batch_size=32, secure_rows=True)
    monkeypatch.setattr(InProcessChannel, "recv", spy_recv)
    monkeypatch.setattr(InProcessChannel, "recv_array", spy_recv_array)
    with CryptenAggregator(transport="threads") as agg:
        for channel in agg._pool.channels:
            channel.coordinator_end = True  # type: ignore[attr-defined]
        ScBatchProx.fit(z, labels, agg, config=config, seed=1, show_progress=False)
        to_owners = [e for e in agg.ledger.entries if e.op == "weighted_mean_to_owners"]
    assert len(to_owners) == config.rounds
    owner_notes = [n for n in notes if isinstance(n, msg.OwnerShare) and n.owner >= 0]
    assert len(owner_notes) == config.rounds * PARTIES * len(SITES) * 3  # gamma, beta, sum w
    # every slice addressed to a client arrived as ciphertext (AES-GCM: never 8k bytes) ...
    sealed_frames = [a for a in arrays if a.dtype == np.uint8]
    assert len(sealed_frames) == len(owner_notes)
    for note, frame in zip(owner_notes, sealed_frames, strict=True):
        assert frame.size == sealed.sealed_size(8 * (note.stop - note.start))
    # ... and every value in the clear is the total weight or a metric mean with its
    # weight (one or two values per party), never a slice of a client's row
    clear = [a for a in arrays if a.dtype != np.uint8]
    assert clear and all(a.dtype == np.int64 and a.size <= 2 for a in clear)


def test_deployed_owner_slices_open_only_at_their_site():
    """secure_rows' owner-revealed mean over sealed shares: each site opens its own row."""
    rng = np.random.default_rng(7)
    rows = len(SITES)
    tables = {n: rng.normal(size=(rows, DIMS)) for n in SITES}
    weights = {"site_a": 30.0, "site_b": 50.0, "site_c": 20.0}
    owned = [[(b * DIMS, (b + 1) * DIMS)] for b in range(rows)]  # site b owns row b
    # the context names every owner's runs (the parties send slices only there)
    context = sealed.make_context(
        "owners-1", SITES, "s/owners", weights, "", dict(zip(SITES, owned, strict=True))
    )
    keys = {
        n: [sealed.client_key(sealed.party_secret(SECRET, r), n) for r in range(PARTIES)]
        for n in SITES
    }
    blobs = [
        sealed.seal_shares(
            tables[n].ravel(),
            keys[n],
            client=n,
            context=context,
            precision_bits=24,
            scale=weights[n],
            extra=weights[n],
        )
        for n in SITES
    ]
    size = rows * DIMS + 1
    with CryptenAggregator(transport="threads") as agg:
        total, stats = agg.aggregate_sealed("sum", blobs, SITES, context, size, 24, owned)
    assert total.shape == (1,) and total[0] == pytest.approx(100.0, abs=1e-6)
    mean = sum(weights[n] * tables[n] for n in SITES) / 100.0
    for b, name in enumerate(SITES):
        slices = stats["owner_slices"][b]
        # ciphertext only: the sealed size, for every party, of the row and the total
        assert sorted((r, lo) for r, lo, _, _ in slices) == sorted(
            (r, lo) for r in range(PARTIES) for lo in (b * DIMS, size - 1)
        )
        assert all(len(blob) == sealed.sealed_size(8 * (hi - lo)) for _, lo, hi, blob in slices)
        opened = sealed.open_owner_slices(keys[name], slices, context, name, 24)
        np.testing.assert_allclose(opened[b * DIMS] / opened[size - 1], mean[b], atol=1e-6)
        other = SITES[(b + 1) % rows]  # relayed to the wrong site: it does not open
        with pytest.raises(sealed.SealError, match="does not open"):
            sealed.open_owner_slices(keys[other], slices, context, other, 24)
    assert stats["coordinator_bytes"] == PARTIES * 8


# ------------------------------------------------------------- secure_rows deployed
SECURE = ScBatchProxConfig(rounds=2, local_epochs=1, batch_size=32, secure_rows=True)
SECURE_PARAMS = {**PARAMS, "config": SECURE.to_dict()}


def _simulated_secure_rows(files, backend: str) -> dict[str, np.ndarray]:
    """Each site's refined cells from the simulated secure_rows run (same seed)."""
    data = {n: ad.read_h5ad(files[n]).obsm["X_pca"] for n in SITES}
    z = np.concatenate(list(data.values()))
    labels = np.repeat(SITES, [len(v) for v in data.values()])
    if backend == "crypten":
        with CryptenAggregator(transport="threads") as agg:
            sim = ScBatchProx.fit(z, labels, agg, config=SECURE, seed=3, show_progress=False)
    else:
        from smpc.plaintext import PlaintextAggregator

        sim = ScBatchProx.fit(
            z, labels, PlaintextAggregator(), config=SECURE, seed=3, show_progress=False
        )
    return {n: sim.client_transform(data[n], n) for n in SITES}


def _refined(files) -> dict[str, np.ndarray]:
    return {
        n: ad.read_h5ad(files[n].parent / "out" / f"{n}.h5ad").obsm["X_scbatchprox"] for n in SITES
    }


def test_deployed_secure_rows_matches_simulation_and_the_coordinator_receives_no_row(
    files, monkeypatch
):
    """secure_rows over real sites and parties: the simulated run within CrypTen's error,
    and everything the coordinator's process receives (the sites' replies, the parties'
    frames) is ciphertext or the one-value total weight: no row, no share of a row."""
    from smpc.channel import InProcessChannel

    frames: list[np.ndarray] = []
    recv_array = InProcessChannel.recv_array

    def spy_recv_array(self, *args, **kwargs):
        array = recv_array(self, *args, **kwargs)
        if getattr(self, "coordinator_end", False):
            frames.append(np.array(array))
        return array

    monkeypatch.setattr(InProcessChannel, "recv_array", spy_recv_array)
    fleet = SiteFleet(files)
    replies: list[tuple[str, Any]] = []
    ask = fleet.ask

    def spy_ask(requests):
        out = ask(requests)
        replies.extend((requests[s][0], r) for s, r in out.items())
        return out

    fleet.ask = spy_ask  # type: ignore[method-assign]
    with CryptenAggregator(transport="threads") as parties:
        for channel in parties._pool.channels:
            channel.coordinator_end = True  # type: ignore[attr-defined]
        agg = DeployedCrypten(fleet, [], backend=parties)  # type: ignore[arg-type]
        record = deployed.run(fleet.hello, agg, fleet.apply, SECURE_PARAMS)
        ops = [e.op for e in agg.ledger.entries]
    assert ops == ["weighted_mean_to_owners"] * SECURE.rounds  # no metrics: nothing else
    assert record["model_state"] == {}  # the coordinator holds no table
    simulated = _simulated_secure_rows(files, "crypten")
    for name, refined in _refined(files).items():
        np.testing.assert_allclose(refined, simulated[name], atol=1e-6)
        assert np.abs(refined - ad.read_h5ad(files[name]).obsm["X_pca"]).max() > 1e-3

    # the sites' replies: the public structure and one sealed share per party
    assert len(replies) == len(SITES) * SECURE.rounds
    from fedsc.deploy.records import arrays_of, params_of

    for step, reply in replies:
        assert step == "scbatchprox/update"
        assert set(params_of(reply)) == {"meta"}
        arrays = arrays_of(reply)
        assert sorted(arrays) == [f"sealed/{i}" for i in range(PARTIES)]
        assert all(a.dtype == np.uint8 for a in arrays.values())
    # the parties' frames: sealed slices (AES-GCM sizes) and the total weight's shares
    rows = 2 * DIMS  # a site's runs: its gamma row and beta row
    sealed_frames = [f for f in frames if f.dtype == np.uint8]
    clear = [f for f in frames if f.dtype != np.uint8]
    assert len(clear) == SECURE.rounds * PARTIES
    assert all(f.dtype == np.int64 and f.size == 1 for f in clear)
    sizes = {sealed.sealed_size(8 * DIMS), sealed.sealed_size(8)}
    assert {f.size for f in sealed_frames} == sizes
    per_round = PARTIES * len(SITES) * (rows // DIMS + 1)
    assert len(sealed_frames) == SECURE.rounds * per_round
    # and no frame or reply holds a site's row (the refined rows, as float64 bytes)
    blob = b"".join(f.tobytes() for f in frames)
    for name in SITES:
        row = fleet.sites[name].state["scbatchprox/rows"]
        assert np.asarray(row["gamma"]).tobytes() not in blob


def test_deployed_secure_rows_in_plaintext_is_bit_identical_to_simulation(files):
    fleet = SiteFleet(files)
    agg = DeployedPlaintext(fleet)  # type: ignore[arg-type]
    deployed.run(fleet.hello, agg, fleet.apply, SECURE_PARAMS)
    simulated = _simulated_secure_rows(files, "plaintext")
    for name, refined in _refined(files).items():
        np.testing.assert_array_equal(refined, simulated[name])


def test_secure_rows_sites_refuse_a_plain_sum_or_their_row_to_another(files):
    fleet = SiteFleet(files)
    own = _update(fleet)["n_train"]
    base = {**_update(fleet)["params"], "config": SECURE.to_dict(), "index": 0}
    base["layout"] = {"beta": [len(SITES), DIMS], "gamma": [len(SITES), DIMS]}
    params = _request("scbatchprox/update", base, SITES, "site_a", **own)  # no 'owned'
    with pytest.raises(RefusedRequest, match=r"check 'owner slices'.*coordinator would receive"):
        fleet.answer("site_a", "scbatchprox/update", params, {})
    runs = deployed.owner_runs(base["layout"], [{"gamma": [b], "beta": [b]} for b in range(3)])
    for owned, match in (
        ({"site_a": runs[1], "site_b": runs[0], "site_c": runs[2]}, "instead of its row"),
        ({"site_a": runs[0], "site_b": runs[0] + runs[1], "site_c": runs[2]}, "to 'site_b'"),
    ):
        params["context"] = sealed.make_context(
            "op-owned", SITES, "scbatchprox/update#round=0", own, "rounds", owned
        )
        with pytest.raises(RefusedRequest, match=f"check 'owner slices'.*{match}"):
            fleet.answer("site_a", "scbatchprox/update", params, {})


def test_secure_rows_parties_send_result_slices_only_where_the_context_says():
    """A coordinator that asks a party for a site's row (or hands it to another site)."""
    names = SITES
    owned = {n: [(b * DIMS, (b + 1) * DIMS)] for b, n in enumerate(names)}
    size = len(names) * DIMS + 1
    honest = [[c, lo, hi] for c, n in enumerate(names) for lo, hi in [*owned[n], (size - 1, size)]]
    honest.append([-1, size - 1, size])
    body = sealed.parse_context(sealed.make_context("o", names, "s", None, "", owned))
    sealed.check_owner_destinations(body, names, honest, size)  # the honest plan passes
    for forged in (
        [*honest, [-1, 0, DIMS]],  # site_a's row to the coordinator
        [[1 if d[0] == 0 and d[1] == 0 else d[0], *d[1:]] for d in honest],  # a's row to b
        None,  # the whole result to the coordinator
    ):
        with pytest.raises(sealed.SealError, match="check 'owner slices'"):
            sealed.check_owner_destinations(body, names, forged, size)
    plain = sealed.parse_context(sealed.make_context("p", names, "s"))
    with pytest.raises(sealed.SealError, match="check 'owner slices'"):
        sealed.check_owner_destinations(plain, names, honest, size)


def test_secure_rows_sites_refuse_a_missing_or_foreign_delivery_and_the_paper_protocol(files):
    """A site goes on only from its own row plus the mean of its own last contribution."""
    fleet = SiteFleet(files)
    own = _update(fleet)["n_train"]
    layout = {"beta": [len(SITES), DIMS], "gamma": [len(SITES), DIMS]}
    runs = deployed.owner_runs(layout, [{"gamma": [b], "beta": [b]} for b in range(3)])
    owned = dict(zip(SITES, runs, strict=True))

    def ask(round_index, arrays, config=SECURE, op="op"):
        base = {**_update(fleet, round_index)["params"], "config": config.to_dict()}
        params = _request(
            "scbatchprox/update", {**base, "index": 0, "layout": layout}, SITES, "site_a", **own
        )
        slot = f"scbatchprox/update#round={round_index}"
        params["context"] = sealed.make_context(op, SITES, slot, own, "rounds", owned)
        return fleet.answer("site_a", "scbatchprox/update", params, arrays)

    ask(0, {}, op="op-0")
    with pytest.raises(RefusedRequest, match=r"check 'schedule'.*not\s+delivered"):
        ask(1, {})
    foreign = sealed.make_context("op-x", SITES, "scbatchprox/update#round=0", own, "rounds", owned)
    delivery = {
        "owned/context": np.frombuffer(foreign.encode(), np.uint8),
        "owned/0": np.zeros(DIMS),
        f"owned/{len(SITES) * DIMS}": np.zeros(DIMS),
        f"owned/{2 * len(SITES) * DIMS}": np.ones(1),
    }
    with pytest.raises(RefusedRequest, match=r"check 'owner slices'.*another operation"):
        ask(1, delivery)
    # rows in the clear in place of the parties' sealed slices (made up by the coordinator)
    clear_rows = {"owned/gamma": np.ones((1, DIMS)), "owned/beta": np.zeros((1, DIMS))}
    with pytest.raises(RefusedRequest, match=r"check 'owner slices'.*another operation"):
        ask(1, clear_rows)
    with pytest.raises(RefusedRequest, match=r"check 'schedule'.*secure_rows"):
        ask(1, {}, config=CONFIG)  # the paper protocol would send the row whole
    # over SecAgg+ the driver refuses before any site trains (the server unmasks the sum)
    with pytest.raises(FedscInputError, match=r"secure_rows.*SecAgg\+"):
        deployed.run(fleet.hello, SimpleNamespace(name="secagg+"), fleet.apply, SECURE_PARAMS)


def test_client_level_dp_for_scbatchprox_at_real_sites_equals_simulation(files):
    """scBatchProx (no DP in its config) under client-level DP deployed: the agreed
    settings travel beside the config, each site clips and noises its own update, and the
    adapter tables are the simulation's (the same seeded noise) bit for bit."""
    import smpc
    from fedsc.privacy.accounting import DPConfig

    dp = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0, "delta": 0.01}
    spec = DPConfig.from_dict(dp).resolve(CONFIG.rounds).mechanism_spec()
    fleet = SiteFleet(files)
    record = deployed.run(
        fleet.hello,
        DeployedPlaintext(fleet),
        fleet.apply,
        {**PARAMS, "dp": {**dp, "simulated": True}},
    )
    z = np.concatenate([ad.read_h5ad(files[n]).obsm["X_pca"] for n in SITES])
    labels = np.repeat(SITES, [ad.read_h5ad(files[n]).n_obs for n in SITES])
    with smpc.make_aggregator("plaintext", mechanisms=[spec], mechanism_seed=3) as agg:
        sim = ScBatchProx.fit(z, labels, agg, config=CONFIG, seed=3, show_progress=False)
    for key, table in (("gamma", sim.adapter.gamma), ("beta", sim.adapter.beta)):
        np.testing.assert_array_equal(record["model_state"][key], table)
    eps = record["dp"]["epsilon_by_observer"]
    assert eps["coordinator"] > eps["output"] > 0  # plaintext: each site's noisy update
