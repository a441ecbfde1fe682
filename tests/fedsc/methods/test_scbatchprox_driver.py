"""scBatchProx's coordinator exists once: the simulation and the deployment only build sites.

``fedsc.methods.scbatchprox_driver.drive`` runs the rounds (the weights, the identity
tables, the owner-revealed strategy of ``secure_rows``) and the final step; the simulation
(``ScBatchProx._train``) and the deployment (``fedsc.deploy.scbatchprox.run``) build their
sites and call it. Bit-identity of both paths is shown by the method, refactor-safety and
deployment-equivalence tests; this one keeps a second copy of the orchestration out.
"""

from __future__ import annotations

from _helpers.calls import calls as _calls

#: The coordinator's steps that only the driver may call.
ORCHESTRATION = {"run_federation", "OwnerRevealFedAvg", "training_cells"}


def test_only_the_driver_orchestrates_a_scbatchprox_run():
    for module in ("fedsc.methods.scbatchprox", "fedsc.deploy.scbatchprox"):
        calls = _calls(module)
        found = {f: sorted(c & ORCHESTRATION) for f, c in calls.items() if c & ORCHESTRATION}
        assert found == {}, f"{module} orchestrates beside the driver: {found}"
        assert "drive" in calls["run" if "deploy" in module else "_train"]
    driver = _calls("fedsc.methods.scbatchprox_driver")["drive"]
    assert driver >= {"run_federation", "OwnerRevealFedAvg", "training_cells", "apply"}
