"""fedsc reads privacy off what the ledger shows the coordinator received, not off a claim.

A backend that hands the coordinator every contribution but claims ``private=True`` (a
plaintext subclass here) must still read as not private wherever fedsc reports exposure.
"""

from __future__ import annotations

import numpy as np

from fedsc.privacy.threat_model import clear_contributions, exposure
from smpc.plaintext import PlaintextAggregator


class _ClaimsPrivacy(PlaintextAggregator):
    """The plaintext backend (the coordinator receives every contribution), claiming privacy."""

    @property
    def private(self) -> bool:
        return True


def test_a_false_private_claim_reads_as_clear_contributions():
    with _ClaimsPrivacy() as agg:
        agg.weighted_mean([np.ones(4), np.zeros(4), np.full(4, 2.0)], [1.0, 2.0, 3.0])
        agg.sum([np.ones(4), np.zeros(4)])
    assert agg.private  # the claim stands; what was recorded does not follow it
    for ledger in (agg.ledger, agg.ledger.to_dict()):  # live, and as run.json holds it
        assert clear_contributions(ledger) == 3 + 2
        table = exposure(ledger)
        coordinator = table[table["observer"] == "coordinator"]
        assert coordinator["receives"].str.startswith("client[").sum() == 5
        assert not table["private"].any()


def test_a_false_private_claim_gets_the_plaintext_coordinators_view():
    """The recorded run reads privacy off the ledger: the coordinator's view holds every
    contribution, so the attacks see what it really received (before: none, 'private')."""
    from fedsc.privacy.views import RecordingMechanism, RunRecord, observer_view
    from smpc.mechanisms.aggregator import MechanismAggregator

    recorder = RecordingMechanism()
    rows = [np.ones(4), np.zeros(4), np.full(4, 2.0)]
    with MechanismAggregator(_ClaimsPrivacy(), [recorder]) as agg:
        agg.weighted_mean(rows, [1.0, 2.0, 3.0])
        record = RunRecord.from_run(agg, recorder)
    assert agg.private and not record.private
    view = observer_view(record, "coordinator")
    got = view.operations[0].contributions
    assert got is not None
    np.testing.assert_allclose(np.stack(got), np.stack(rows))
