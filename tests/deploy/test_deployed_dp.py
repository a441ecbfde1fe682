"""Every DP level deployed: the noise is added at the sites, never by the coordinator.

The deployed driver runs over real sites (each :class:`~fedsc.deploy.site.Site`'s own
code on its own file, plaintext transport; only Flower is left out: the client-level DP
study of tests/deploy/test_deployed_runs.py runs through it): cell level (DP-SGD at the
site), donor level (each site counts its own training donors, its FedAvg weight, on the
pancreas ``orig.ident`` column, and keeps its Adam moments over two rounds), client level
(the ``gaussian`` mechanism's clipping and noise share at the site, the rescaling at the
coordinator) and a run's mechanisms. With ``simulated: true`` (the debugging mode: noise
seeded from the run seed; otherwise each site draws it from its OS CSPRNG) each gives the
simulation's outputs bit for bit and the simulation's DP record.
"""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import torch
from _sites import CONFIG, SEED, SITES

from fedsc.deploy.checks import fedscgen_deployable
from fedsc.deploy.fedscgen import site_dp_config
from fedsc.errors import FedscInputError
from fedsc.methods.fedscgen import run_fedscgen

DP = {"level": "cell", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-4, "simulated": True}
#: σ calibrated to a target instead (the coordinator calibrates, each site checks).
TARGET = {"level": "cell", "target_epsilon": 8.0, "clip": 1.0, "delta": 1e-4, "simulated": True}


#: Donor level: each sampled donor gives at most 4 cells; σ calibrated to a target.
DONOR = {
    "level": "donor",
    "target_epsilon": 8.0,
    "clip": 1.0,
    "delta": 1e-4,
    "donor_sampling_rate": 0.5,
    "cells_per_donor": 4,
    "simulated": True,
}


def test_deployable_dp_levels_and_the_sites_sigma_check():
    fedscgen_deployable(replace(CONFIG, dp=DP))  # cell level deploys
    fedscgen_deployable(replace(CONFIG, dp=CLIENT))  # client level: noise at the sites
    fedscgen_deployable(replace(CONFIG, dp=DONOR, donor_key="orig.ident"))  # donor level too
    fedscgen_deployable(replace(CONFIG, keep_optimizer_state=True))  # each site keeps its own
    # a site trains with the agreed σ, or the one calibrated to the agreed target
    fixed = replace(CONFIG, dp={"level": "cell", "noise_multiplier": 1.5})
    assert site_dp_config(fixed, None) is fixed
    with pytest.raises(FedscInputError, match=r"agreed DP config fixes 1\.5"):
        site_dp_config(fixed, 0.1)
    calibrated = site_dp_config(replace(CONFIG, dp=TARGET), 2.0)
    assert calibrated.dp == {**TARGET, "noise_multiplier": 2.0}
    with pytest.raises(FedscInputError, match="sent none"):
        site_dp_config(replace(CONFIG, dp=TARGET), None)


def test_a_sites_dp_noise_is_fresh_unless_simulated(data, tmp_path):
    """The site step itself (no deployment): the same request twice gives other noise in
    a real run, and the same bits only when the agreed config says ``simulated``."""
    from fedsc.deploy.fedscgen import site_update
    from fedsc.deploy.site import Site
    from fedsc.methods.fedscgen import FedScGenMethod
    from fedsc.methods.vae import as_tensor

    path = tmp_path / f"{SITES[0]}.h5ad"
    data[data.obs["batch"] == SITES[0]].copy().write_h5ad(path)
    site = Site(path, name=SITES[0])
    updates = {}
    for simulated in (False, True):
        config = replace(CONFIG, dp={**DP, "simulated": simulated})
        start = FedScGenMethod({0: as_tensor(site.adata.X)}, config, SEED).initial_state()
        arrays = {k: v.numpy() for k, v in start.items()}
        params = {"config": config.to_dict(), "index": 0, "round": 0, "seed": SEED}
        updates[simulated] = [site_update(site, dict(params), arrays) for _ in range(2)]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(*updates[False])  # fresh noise: nothing in run.json regenerates it
    assert same(*updates[True])  # the debug mode is the seeded one


@pytest.mark.parametrize("dp", [None, DP], ids=["no-dp", "cell-dp"])
def test_a_site_keeps_its_adam_moments_between_rounds(data, tmp_path, dp):
    """keep_optimizer_state deployed: the site step over two rounds, fed the simulated
    client's global states, gives the simulated client's updates bit for bit (no
    deployment: the site keeps its moments in its run state, which hello clears)."""
    from fedsc.deploy.fedscgen import site_update
    from fedsc.deploy.site import Site
    from fedsc.federation.seeding import client_generators
    from fedsc.methods.fedscgen import FedScGenMethod
    from fedsc.methods.vae import as_tensor, torch_threads

    path = tmp_path / f"{SITES[0]}.h5ad"
    data[data.obs["batch"] == SITES[0]].copy().write_h5ad(path)
    site = Site(path, name=SITES[0])
    config = replace(CONFIG, rounds=2, keep_optimizer_state=True, dp=dp)
    sim = FedScGenMethod({0: as_tensor(site.adata.X)}, config, SEED)
    state = sim.initial_state()
    for r in range(2):
        with torch_threads(config.num_threads):
            want = sim.local_update(0, state, r, client_generators(SEED, r, [0])[0]).state
        params = {"config": config.to_dict(), "index": 0, "round": r, "seed": SEED}
        got = site_update(site, params, {k: v.numpy() for k, v in state.items()})
        assert all(torch.equal(got[k], want[k]) for k in want), r
        # the next round starts from a global state the client did not make itself
        state = {k: v + 0.01 if v.is_floating_point() else v for k, v in want.items()}
    assert "fedscgen/optimizer" in site.state


#: Client level: DP-FedAvg, each site clipping and noising its own update.
CLIENT = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-2, "simulated": True}


def _simulated_aggregator(dp):
    import smpc
    from fedsc.privacy.accounting import DPConfig

    if dp["level"] != "client":
        return smpc.make_aggregator("plaintext")
    fields = {k: v for k, v in dp.items() if k != "simulated"}
    spec = DPConfig.from_dict(fields).resolve(CONFIG.rounds).mechanism_spec()
    return smpc.make_aggregator("plaintext", mechanisms=[spec], mechanism_seed=SEED)


@pytest.fixture
def fleet(data, tmp_path):
    """The three sites as real Site objects on their own files (no Flower)."""
    from _sites import SiteFleet

    from fedsc.deploy.local import split_by_batch

    files = split_by_batch(data, "batch", tmp_path / "sites")
    facts = {"batch_key": "batch", "labels_key": "celltype", "input": "expression"}
    return SiteFleet(files, facts={**facts, "method": "fedscgen"})


@pytest.mark.parametrize("dp", [DP, DONOR, CLIENT], ids=["cell", "donor", "client"])
def test_dp_through_real_sites_equals_simulation(data, fleet, dp):
    """The deployed driver over real sites (each site's own code, plaintext transport):
    cell level (DP-SGD at the site); donor level (each site counts its own training
    donors, its FedAvg weight, and keeps its Adam moments over two rounds); client level
    (each site clips and noises its own update; the coordinator only rescales): the
    simulation's outputs and DP record, bit for bit."""
    from fedsc.deploy import fedscgen as deployed
    from fedsc.deploy.aggregators import DeployedPlaintext

    donor = {"donor_key": "orig.ident", "rounds": 2, "keep_optimizer_state": True}
    config = replace(CONFIG, dp=dp, **(donor if dp["level"] == "donor" else {}))
    sim = data.copy()
    with _simulated_aggregator(dp) as agg:
        result = run_fedscgen(
            sim, batch_key="batch", labels_key="celltype", aggregator=agg, config=config, seed=SEED
        )
    params = {"config": config.to_dict(), "seed": SEED, "batch_key": "batch"}
    deployed_agg = DeployedPlaintext(fleet)
    record = deployed.run(
        fleet.hello, deployed_agg, fleet.apply, {**params, "labels_key": "celltype"}
    )
    for s, site in fleet.sites.items():
        got = ad.read_h5ad(site.out_dir / f"{s}.h5ad")
        mine = sim[sim.obs["batch"] == s]
        np.testing.assert_array_equal(got.obsm["X_fedscgen"], mine.obsm["X_fedscgen"])
        np.testing.assert_array_equal(got.layers["fedscgen"], mine.layers["fedscgen"])
    by_observer = record["dp"].pop("epsilon_by_observer", None)
    want = result.info["dp"]
    assert record["dp"] == json.loads(json.dumps(want))  # ε, σ, steps, q: the same record
    if dp["level"] in ("cell", "donor"):  # each site's own accountant, with its output
        assert np.isfinite(want["epsilon"]) and want["epsilon"] > 0
        assert all("epsilon" in o for o in record["outputs"].values())
    if dp["level"] == "donor":  # FedAvg weighted by each site's own donor count
        donors = {s: sim.obs.loc[sim.obs["batch"] == s, "orig.ident"].nunique() for s in SITES}
        n_train = {c["name"]: c["n_train"] for c in record["clients"]}
        assert all(0 < want["n_donors"][s] <= donors[s] < n_train[s] for s in SITES)
    if dp["level"] == "client":
        # the sites' noise, recorded as the simulation records it; a plaintext coordinator
        # sees each site's noisy update (σ/√3), more than the output's σ
        fedavg = [e for e in deployed_agg.ledger.entries if e.tag == "fedavg"]
        assert fedavg and all(e.mechanisms[0]["name"] == "gaussian" for e in fedavg)
        assert by_observer["coordinator"] > by_observer["output"] > 0


def test_client_level_sites_noise_their_own_update_and_check_the_coordinator(data, fleet):
    """A site under client-level DP: fresh noise unless simulated, no update without the
    mechanism's context, and the noise split among the sites that really take part."""
    from fedsc.methods.fedscgen import FedScGenMethod
    from fedsc.methods.vae import as_tensor

    site = fleet.sites[SITES[0]]
    n_train = {s: 100 for s in SITES}
    context = {"op": "weighted_mean", "operation": 0, "client": 0, "n_clients": 3, "weight": 100}
    context.update(round=0, tag="fedavg")

    def ask(dp, **changes):
        config = replace(CONFIG, dp=dp)
        start = FedScGenMethod({0: as_tensor(site.adata.X)}, config, SEED).initial_state()
        params = {"config": config.to_dict(), "index": 0, "round": 0, "seed": SEED}
        params.update({"n_train": n_train, "transport": "plaintext", "mechanism": context})
        params.update(changes)
        arrays = {k: v.numpy() for k, v in start.items()}
        return site.run("fedscgen/update", params, arrays), start

    def same(a, b):
        return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)

    fresh = {**CLIENT, "simulated": False}
    (a, start), (b, _) = ask(fresh), ask(fresh)
    assert not same(a, b)  # the site's own CSPRNG: nothing in run.json regenerates it
    assert same(ask(CLIENT)[0], ask(CLIENT)[0])  # the debug mode is the seeded one
    # shared in float64, as the simulated client's row (no rounding before aggregation)
    assert a.keys() == start.keys() and all(np.asarray(a[k]).dtype == np.float64 for k in a)
    with pytest.raises(FedscInputError, match=r"check 'dp'.*without the mechanism's context"):
        ask(CLIENT, mechanism=None)
    with pytest.raises(FedscInputError, match=r"check 'dp'.*splits the noise among 30"):
        ask(CLIENT, mechanism={**context, "n_clients": 30})


def test_run_mechanisms_through_real_sites_equal_simulation(data, fleet):
    """A run's mechanisms (here clip, then client-level DP's noise) deployed: each site
    applies them to its own value in the simulated aggregator's order, the coordinator
    only transforms the aggregate; the outputs are the simulation's bit for bit."""
    import smpc
    from fedsc.deploy import fedscgen as deployed
    from fedsc.deploy.aggregators import DeployedPlaintext
    from fedsc.privacy.accounting import DPConfig

    config = replace(CONFIG, dp=CLIENT)
    clip = {"name": "clip", "max_norm": 0.5}
    fields = {k: v for k, v in CLIENT.items() if k != "simulated"}
    gaussian = DPConfig.from_dict(fields).resolve(CONFIG.rounds).mechanism_spec()
    sim = data.copy()
    with smpc.make_aggregator("plaintext", mechanisms=[clip, gaussian], mechanism_seed=SEED) as agg:
        run_fedscgen(
            sim, batch_key="batch", labels_key="celltype", aggregator=agg, config=config, seed=SEED
        )
    params = {"config": config.to_dict(), "seed": SEED, "batch_key": "batch"}
    params.update(labels_key="celltype", mechanisms=[clip])
    deployed_agg = DeployedPlaintext(fleet)
    deployed.run(fleet.hello, deployed_agg, fleet.apply, params)
    for s, site in fleet.sites.items():
        got = ad.read_h5ad(site.out_dir / f"{s}.h5ad")
        np.testing.assert_array_equal(
            got.obsm["X_fedscgen"], sim[sim.obs["batch"] == s].obsm["X_fedscgen"]
        )
    # every fedavg entry lists both, in order; the correction's sums the clip alone
    names = {e.tag: [m["name"] for m in e.mechanisms] for e in deployed_agg.ledger.entries}
    assert names["fedavg"] == ["clip", "gaussian"]
