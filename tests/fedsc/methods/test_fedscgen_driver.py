"""FedscGen's coordinator exists once: the simulation and the deployment only build sites.

``fedsc.methods.fedscgen_driver.drive`` runs the rounds and the correction; the simulation
(``run_fedscgen``, ``correct``) and the deployment (``fedsc.deploy.fedscgen.run``) build
their sites and call it. Bit-identity of both paths is shown by the refactor-safety and
deployment-equivalence tests; this one keeps a second copy of the orchestration out.
"""

from __future__ import annotations

from _helpers.calls import calls as _calls

#: The coordinator's steps that only the driver may call.
ORCHESTRATION = {"run_federation", "dominant_means", "training_cells", "resolve_dp"}


def test_only_the_driver_orchestrates_a_fedscgen_run():
    for module in ("fedsc.methods.fedscgen", "fedsc.deploy.fedscgen"):
        calls = _calls(module)
        found = {f: sorted(c & ORCHESTRATION) for f, c in calls.items() if c & ORCHESTRATION}
        # FedScGenMethod resolves DP itself when used on its own (no driver)
        found.pop("_resolve_dp", None)
        assert found == {}, f"{module} orchestrates beside the driver: {found}"
        assert "drive" in calls["run" if "deploy" in module else "run_fedscgen"]
    assert _calls("fedsc.methods.fedscgen")["correct"] >= {"correct_sites"}
    driver = _calls("fedsc.methods.fedscgen_driver")["drive"]
    assert driver >= {"run_federation", "training_cells", "resolve_dp", "correct_sites"}
