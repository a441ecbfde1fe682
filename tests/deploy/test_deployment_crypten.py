"""The CrypTen transport deployed on 127.0.0.1: three SuperNodes (one pancreas batch each,
with their party keys) and three CrypTen parties + the dealer in their own processes, as
`fedsc party` runs them; the coordinator (ServerApp) only knows their addresses.

Proves: FedscGen equals simulation within 1e-6; every value the ServerApp received from a
site is a sealed share it cannot read (no cell, no update, no share in the clear); a
site killed mid-round stops the run with an error naming it, within the step timeout.
"""

from __future__ import annotations

import json
import threading
import time

import anndata as ad
import numpy as np
import pytest
from _sites import SITES, fedscgen_params, leaked_cells, revive, sites_whose_update_arrived

from fedsc.deploy.fleet import DeploymentError


def test_crypten_deployment_equals_simulation_and_relays_only_sealed_shares(
    deployment, simulation, data, local_updates, tmp_path
):
    folder = tmp_path / "run"
    config = {"params": fedscgen_params(), "transport": "crypten", "log-messages": True}
    record = deployment.run(config, folder, timeout=400)
    sim, result = simulation
    assert record["private"] is True and record["backend"] == "crypten"
    assert record["correction"]["dominant"] == result.info["correction"]["dominant"]
    model = np.load(folder / "model.npz")
    for k, v in result.model.state_dict().items():
        assert np.abs(model[k].astype(np.float64) - v.double().numpy()).max(initial=0) <= 1e-6
    for s in SITES:
        out = ad.read_h5ad(deployment.site_out(s) / f"{s}.h5ad")
        mine = sim[sim.obs["batch"] == s]
        np.testing.assert_allclose(out.obsm["X_fedscgen"], mine.obsm["X_fedscgen"], atol=1e-6)
        np.testing.assert_allclose(out.layers["fedscgen"], mine.layers["fedscgen"], atol=1e-6)
    # every array a site sent (beyond public JSON) is a sealed share: bytes that look uniform
    ledger = json.loads((folder / "ledger.json").read_text())
    assert {e["op"] for e in ledger["entries"]} == {"weighted_mean", "sum", "argmax"}
    n_sealed = 0
    for meta in sorted((folder / "messages").glob("*.json")):
        step = json.loads(meta.read_text())["step"]
        with np.load(meta.with_suffix(".npz")) as arrays:
            for name in arrays.files:
                arr = arrays[name]
                if step == "hello" or name.startswith("fedsc.params"):
                    continue
                assert name.startswith("fedsc.arrays/sealed/"), (step, name)
                assert arr.dtype == np.uint8
                n_sealed += 1
                if arr.size > 4096:  # ciphertext: byte histogram of a uniform source
                    counts = np.bincount(arr, minlength=256)
                    assert counts.max() < 3 * arr.size / 256, (step, name)
    parties = 3
    assert n_sealed >= len(SITES) * parties * len(ledger["entries"])
    # the searches that find every update under plaintext find neither a cell nor an update
    assert not leaked_cells(folder, data)
    assert sites_whose_update_arrived(folder, local_updates) == set()


def test_a_site_killed_mid_round_stops_the_run_naming_it(deployment, tmp_path):
    victim = "celseq2"
    folder = tmp_path / "killed"
    messages = folder / "messages"

    def kill_after_hello() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if messages.exists() and len(list(messages.glob("*.json"))) >= len(SITES):
                deployment.kill_site(victim)  # the training request is on its way
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_hello, daemon=True)
    killer.start()
    timeout = 10.0
    config = {
        "params": fedscgen_params(),
        "transport": "crypten",
        "log-messages": True,
        "timeout": timeout,
    }
    start = time.monotonic()
    try:
        with pytest.raises(DeploymentError) as failure:
            deployment.run(config, folder, timeout=400)
    finally:
        killer.join(5)
        revive(deployment)  # the shared deployment (conftest.py) serves later tests
    assert (folder / "run.json").exists(), str(failure.value)
    run = json.loads((folder / "run.json").read_text())
    assert f"[{victim!r}] did not answer step 'fedscgen/update'" in run["error"], run["error"]
    assert time.monotonic() - start < 120 + timeout
