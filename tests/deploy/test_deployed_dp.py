"""Cell- and donor-level DP deployed: DP-SGD at each site, with its own noise and accountant.

Plaintext FedscGen runs on the shared deployment (tests/deploy/conftest.py) with
``dp: {level: cell | donor, simulated: true}``: each site runs DP-SGD with the agreed σ
(the noise seeded from the run seed only because the config says ``simulated``, the
debugging mode; otherwise each site draws it from its OS CSPRNG) and reports its ε, from
its own accountant, with its output; at donor level each site counts its own training
donors (its FedAvg weight; the pancreas ``orig.ident`` column names the donor or sample).
Each deployment gives the simulation's outputs bit for bit and the simulation's DP record.
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


@pytest.mark.parametrize(
    ("dp", "donor_key"), [(DP, None), (DONOR, "orig.ident")], ids=["cell", "donor"]
)
def test_dp_deployed_equals_simulation(deployment, data, tmp_path, dp, donor_key):
    config = replace(CONFIG, dp=dp, donor_key=donor_key)
    if donor_key is not None:  # and Adam kept between two rounds at each site
        config = replace(config, rounds=2, keep_optimizer_state=True)
    sim = data.copy()
    result = run_fedscgen(
        sim,
        batch_key="batch",
        labels_key="celltype",
        aggregator="plaintext",
        config=config,
        seed=SEED,
    )
    params = {
        "config": config.to_dict(),
        "seed": SEED,
        "batch_key": "batch",
        "labels_key": "celltype",
    }
    record = deployment.run(
        {"params": json.dumps(params), "transport": "plaintext"}, tmp_path, timeout=400
    )
    for s in SITES:
        got = ad.read_h5ad(deployment.site_out(s) / f"{s}.h5ad")
        mine = sim[sim.obs["batch"] == s]
        np.testing.assert_array_equal(got.obsm["X_fedscgen"], mine.obsm["X_fedscgen"])
        np.testing.assert_array_equal(got.layers["fedscgen"], mine.layers["fedscgen"])
    want = result.info["dp"]
    assert np.isfinite(want["epsilon"]) and want["epsilon"] > 0
    assert record["dp"] == json.loads(json.dumps(want))  # ε, σ, steps, q: the same record
    # each training site reported its own ε with its output
    assert {s: "epsilon" in o for s, o in record["outputs"].items()} == dict.fromkeys(SITES, True)
    if donor_key is not None:  # FedAvg weighted by each site's own donor count
        donors = {s: sim.obs.loc[sim.obs["batch"] == s, donor_key].nunique() for s in SITES}
        n_train = {c["name"]: c["n_train"] for c in record["clients"]}
        assert want["n_donors"] == record["dp"]["n_donors"]
        assert all(0 < want["n_donors"][s] <= donors[s] < n_train[s] for s in SITES)


def test_deployable_dp_levels_and_the_sites_sigma_check():
    fedscgen_deployable(replace(CONFIG, dp=DP))  # cell level deploys
    with pytest.raises(FedscInputError, match=r"client-level DP cannot be deployed.*distributed"):
        fedscgen_deployable(replace(CONFIG, dp={"level": "client", "noise_multiplier": 1.0}))
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
