"""Deployed runs enter sweeps, ``compare`` and ``report`` like simulated ones.

A study with a simulated and a deployed variant (``deploy: plaintext``: three SuperNodes
on 127.0.0.1, one pancreas batch each), both under client-level DP (seeded, so that they
can be compared; deployed, each site noises its own update), gives the same tidy rows, bit
for bit, the same ledger and the same DP block; ``fedsc compare`` and ``fedsc report``
read both. (``fedsc deploy evaluate``, for
a real deployment's folders, is tested in test_deployment.py on its plaintext run.)
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from _sites import SITES

from fedsc.cli import main
from fedsc.errors import FedscInputError
from fedsc.run.config import RunConfig
from fedsc.sweep import RunStore

PARAMS = {"rounds": 1, "local_epochs": 1, "num_threads": 1, "hidden": [64, 64], "latent": 8}
SEEDS = [1]  # each deployed run starts its own SuperLink, SuperNodes and workers
DP = {"level": "client", "noise_multiplier": 1.0, "clip": 1.0, "delta": 0.01, "simulated": True}


@pytest.fixture(scope="module")
def dataset(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "three_sites.h5ad"
    data.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def sweep(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    study = {
        "study": "deployed_vs_simulated",
        "datasets": [str(dataset)],
        "seeds": SEEDS,
        "defaults": {
            "batch_key": "batch",
            "labels_key": "celltype",
            "panels": ["fedscgen"],
            # client-level DP: in the deployed variant each site clips and noises its own
            # update (seeded only because simulated: the rows can then be compared)
            "dp": DP,
        },
        "methods": {
            "fedscgen": {
                "settings": {"params": PARAMS},
                "variants": {"simulated": {}, "deployed": {"deploy": "plaintext"}},
            }
        },
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["sweep", str(path), "--out", str(root / "out")]) == 0
    return root / "out"


def test_deployed_rows_equal_simulated_rows(sweep):
    records = {(r["config"]["variant"], r["config"]["seed"]): r for r in RunStore(sweep).records()}
    assert sorted(records) == sorted((v, s) for v in ("deployed", "simulated") for s in SEEDS)
    assert all(r["status"] == "ok" for r in records.values()), [
        r.get("error") for r in records.values()
    ]
    for seed in SEEDS:
        sim, dep = records["simulated", seed], records["deployed", seed]
        rows = {}
        for name, rec in (("sim", sim), ("dep", dep)):
            frame = pd.DataFrame(rec["rows"])
            rows[name] = frame.set_index(["method", "panel", "metric"])["value"].sort_index()
        assert len(rows["sim"]) > 4
        pd.testing.assert_series_equal(rows["sim"], rows["dep"], check_exact=True)
        # the coordinator received the same values: the deployed ledger's operations
        ops = [
            [(e["op"], e["round"], e["tag"], e["n_values"]) for e in r["info"]["ledger"]["entries"]]
            for r in (sim, dep)
        ]
        assert ops[0] == ops[1]
        assert dep["info"]["deployment"]["deployment"]["transport"] == "plaintext"
        assert sorted(dep["info"]["deployment"]["deployment"]["sites"]) == SITES
        backends = set(pd.DataFrame(dep["rows"]).query("method == 'fedscgen'")["backend"])
        assert backends == {"deploy:plaintext"}
        # the same DP block: σ, ε per observer from the ledger's recorded mechanisms
        # (a plaintext coordinator sees each site's noisy update), the seeded-noise label
        # (each run audits its claim with fresh canaries: the audits' draws differ)
        audits = [r["info"]["dp"].pop("audit") for r in (sim, dep)]
        assert dep["info"]["dp"] == sim["info"]["dp"]
        claims = [[(a["observer"], a["claimed_epsilon"]) for a in run] for run in audits]
        assert claims[0] == claims[1] and len(claims[0]) == 2
        by_observer = dep["info"]["dp"]["epsilon_by_observer"]
        assert by_observer["coordinator"] > by_observer["output"] > 0
        assert dep["info"]["private"] is False and "simulated DP" in dep["info"]["privacy"]


def test_compare_and_report_read_deployed_runs(sweep, capsys):
    assert main(["compare", str(sweep), "--a", "variant=simulated", "--b", "variant=deployed"]) == 0
    table = pd.read_csv(sweep / "comparison.csv")
    fed = table[table["method"] == "fedscgen"]
    assert len(fed) and (fed["n_a"] == len(SEEDS)).all() and (fed["n_b"] == len(SEEDS)).all()
    assert np.allclose(fed["delta_mean"], 0.0, atol=0)  # bit-identical runs
    assert main(["report", str(sweep)]) == 0
    # the variants line (the study's name also holds the word)
    assert re.search(r"variants: [^\n]*\bdeployed\b", (sweep / "report.md").read_text())


def test_deploy_setting_is_checked_before_anything_runs():
    with pytest.raises(FedscInputError, match="unknown deployment transport"):
        RunConfig(method="fedscgen", deploy="grpc")
    with pytest.raises(FedscInputError, match="cannot be deployed"):
        RunConfig(method="scgen", deploy="plaintext")
    with pytest.raises(FedscInputError, match=r"replaces the backend"):
        RunConfig(method="fedscgen", deploy="plaintext", backend="crypten")
    # DP deploys for a method with DP at its sites (FedscGen), over the batches as sites
    dp = {"level": "client", "target_epsilon": 4.0, "clip": 0.1, "delta": 1e-3}
    RunConfig(method="fedscgen", deploy="secagg+", dp=dp)
    RunConfig(method="scbatchprox", deploy="crypten", mechanisms=[{"clip": {"max_norm": 1.0}}])
    RunConfig(method="scbatchprox", deploy="secagg+", dp=dp)  # client level: at the sites
    cell = {"level": "cell", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-4}
    with pytest.raises(FedscInputError, match=r"cell-level DP \(DP-SGD\).*fedscgen only"):
        RunConfig(method="scbatchprox", deploy="secagg+", dp=cell)  # simulated or not
    with pytest.raises(FedscInputError, match=r"\['dp.clients: donor'\]"):
        RunConfig(
            method="fedscgen", deploy="plaintext", donor_key="donor", dp={**dp, "clients": "donor"}
        )
    # secure_rows deploys over crypten (and plaintext); SecAgg+ cannot reveal a row to its
    # owner only (the coordinator unmasks its sum)
    with pytest.raises(FedscInputError, match=r"secure_rows.*SecAgg"):
        RunConfig(method="scbatchprox", deploy="secagg+", params={"secure_rows": True})
    RunConfig(method="scbatchprox", deploy="crypten", params={"secure_rows": True})
    # the default (simulation) keeps every earlier run id (this one predates deploy)
    assert RunConfig(method="fedscgen").run_id == "667a38da4b58b48c"


def test_the_sites_receive_the_runs_resolved_dp_settings(data):
    """``fedsc run --deploy`` with DP: what the sites train under (no deployment)."""
    from fedsc.deploy.experiment import site_dp
    from fedsc.methods import get_method
    from fedsc.privacy import in_run

    spec = get_method("fedscgen")
    base = {"method": "fedscgen", "batch_key": "batch", "labels_key": "celltype"}
    client = {"level": "client", "target_epsilon": 8.0, "clip": 1.0, "delta": 1e-2}
    cfg = RunConfig(**base, deploy="plaintext", dp=client)
    privacy = in_run.start(cfg, data, spec)
    sent = site_dp(cfg, privacy)["dp"]
    # σ as the run layer calibrated it (the sites check it against the target), not a default
    assert sent["noise_multiplier"] == privacy.dp.noise_multiplier > 0
    assert {k: sent[k] for k in client} == client and sent["simulated"] is False
    cell = {"level": "cell", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-4}
    cfg = RunConfig(**base, deploy="plaintext", dp=cell)
    assert site_dp(cfg, in_run.start(cfg, data, spec))["dp"] == cell
    donor = {**cell, "level": "donor"}
    cfg = RunConfig(**base, deploy="plaintext", dp=donor, donor_key="orig.ident")
    sent = site_dp(cfg, in_run.start(cfg, data, spec))
    assert sent["dp"] == donor and sent["donor_key"] == "orig.ident"
    plain = RunConfig(**base, deploy="plaintext", params={"rounds": 2})
    assert site_dp(plain, in_run.start(plain, data, spec)) == {"rounds": 2}
    # scBatchProx has no DP in its config: the agreed settings travel beside it
    from fedsc.deploy.experiment import agreed_client_dp

    sbp = RunConfig(
        method="scbatchprox", batch_key="batch", deploy="plaintext", dp=client, use_rep="X_pca"
    )
    privacy = in_run.start(sbp, data, get_method("scbatchprox"))
    assert "dp" not in site_dp(sbp, privacy)
    beside = agreed_client_dp(privacy)
    assert beside["noise_multiplier"] == privacy.dp.noise_multiplier > 0


def test_a_runs_mechanisms_travel_to_the_sites_as_json():
    from fedsc.deploy.experiment import _mechanism_spec

    assert _mechanism_spec("clip") == "clip"
    assert _mechanism_spec({"clip": {"max_norm": 0.5}}) == {"name": "clip", "max_norm": 0.5}
