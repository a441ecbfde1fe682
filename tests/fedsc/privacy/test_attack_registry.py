"""A new attack is one module plus one ``register_attack`` line, and then runs, run-config
checks and the labels use it unchanged; which methods it runs on follows from the
capabilities it requires and the method's spec declares (``MethodSpec.reveals``)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pandas as pd
import pytest

from fedsc.datasets import simulate
from fedsc.errors import FedscInputError
from fedsc.methods import get_method
from fedsc.privacy import ATTACKS, Attack, register_attack, unregister_attack
from fedsc.privacy.threat_model import MEASURED_BY
from fedsc.run.config import RunConfig
from fedsc.run.execute import execute_run

#: The whole new attack. Nothing else is edited.
TOY_MODULE = '''
"""Toy attack: the sign of each client's update, from the contributions a view holds."""

import numpy as np
import pandas as pd

from fedsc.privacy import COLUMNS
from fedsc.privacy.attacks import attack_row


def sign_agreement(view, truth):
    """Per client and round: the fraction of values whose update sign the view gets right."""
    rows = []
    for o in view.select(op="weighted_mean"):
        if o.contributions is None or o.reference is None or o.tag == "metrics":
            continue
        true = truth.record.local_contributions(o.index) - o.reference
        for c, row in enumerate(o.contributions):
            if np.isfinite(row).all():
                hit = np.mean(np.sign(row - o.reference) == np.sign(true[c]))
                rows.append(attack_row(view, "toy_sign", c, "sign_agreement", hit, 0.5, o.round))
    return pd.DataFrame(rows, columns=COLUMNS)
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_sign_attack.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_sign_attack", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_sign_attack"] = module
    spec.loader.exec_module(module)
    # the one registry line: reads the coordinator's view of a method revealing FiLM rows
    register_attack(
        Attack(
            "toy_sign",
            "toy_sign_attack:sign_agreement",
            observers=("coordinator",),
            requires=frozenset({"film_rows"}),
        )
    )
    yield module
    unregister_attack("toy_sign")
    sys.modules.pop("toy_sign_attack", None)


def test_a_registered_attack_runs_inside_a_run_and_labels_it(toy):
    adata = simulate(240, 300, n_batches=3, n_cell_types=3, seed=0)
    cfg = RunConfig(
        "scbatchprox",
        n_comps=10,
        n_top_genes=200,
        panels=[],
        params={"rounds": 2},
        attacks=["toy_sign"],
    )
    res = execute_run(cfg, adata=adata)
    att = res.rows[res.rows["panel"] == "attack"]
    assert set(att["metric"]) == {"attack:toy_sign:sign_agreement"}
    assert set(att["observer"]) == {"coordinator"}  # its declared observers only
    (row,) = att.to_dict("records")
    assert row["value"] == 1.0 and row["chance"] == 0.5  # plaintext: every sign exact
    assert res.info["privacy"].startswith("coordinator: leaks (toy_sign:sign_agreement")
    assert res.info["private"] is False
    assert "toy_sign" in MEASURED_BY["coordinator"]
    assert "toy_sign" not in MEASURED_BY["client"]


def test_capabilities_decide_where_an_attack_runs(toy):
    attack = ATTACKS["toy_sign"]
    assert attack.applies_to(get_method("scbatchprox"))
    assert not attack.applies_to(get_method("fedscgen"))
    with pytest.raises(FedscInputError, match=r"\['film_rows'\], which fedscgen does not reveal"):
        RunConfig("fedscgen", attacks=["toy_sign"])
    # an attack that requires nothing runs on every federated method
    for name in ("update_recovery", "party_shares"):
        assert all(ATTACKS[name].applies_to(get_method(m)) for m in ("scbatchprox", "fedscgen"))
    # the built-in FedscGen attacks read what FedscGen reveals, and nothing else does
    fedscgen = {n for n in ATTACKS if ATTACKS[n].applies_to(get_method("fedscgen"))}
    assert fedscgen == {
        "update_recovery",
        "party_shares",
        "fedscgen_membership",
        "fedscgen_property",
        "fedscgen_revealed_values",
    }


def test_each_attack_gets_the_views_it_reads(toy):
    """Only the declared observers' views, and only views of a method revealing what the
    attack requires (``view.public["reveals"]``)."""
    import numpy as np

    from fedsc.privacy import RunRecord, Truth, all_views, recording_aggregator, run_attacks

    def record(public):
        agg, recorder = recording_aggregator("plaintext")
        with agg:
            with agg.ledger.scope(0, "fedavg"):
                ref = np.zeros(4)
                agg.weighted_mean([ref + 1.0, ref - 2.0], [1.0, 3.0], reference=ref)
            return RunRecord.from_run(agg, recorder, public=public)

    film = record({"reveals": ["film_rows"]})
    rows = run_attacks(all_views(film), Truth(film), ["toy_sign"])
    assert set(rows["observer"]) == {"coordinator"} and (rows["value"] == 1.0).all()
    assert len(rows) == 2  # both clients; the client view's own row is not read
    vae = record({"reveals": ["vae_state"]})
    assert run_attacks(all_views(vae), Truth(vae), ["toy_sign"]).empty


def test_register_refuses_a_duplicate_and_a_bad_declaration(toy):
    with pytest.raises(ValueError, match="'toy_sign' is already registered"):
        register_attack(Attack("toy_sign", toy.sign_agreement))
    with pytest.raises(ValueError, match="unknown observer"):
        Attack("x", toy.sign_agreement, observers=("dealer",))
    with pytest.raises(ValueError, match="needs"):
        Attack("x", toy.sign_agreement, needs=frozenset({"cells"}))
    assert isinstance(ATTACKS["toy_sign"](_empty_view(), None), pd.DataFrame)


def _empty_view():
    from fedsc.privacy.views import ObserverView

    return ObserverView("coordinator", "plaintext", False, (), ())
