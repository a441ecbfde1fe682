"""Per-role identities in the parties' rendezvous (issue 19, point 4).

The shared key authenticates the group, and the coordinator holds it (it connects to
the parties with it). With a roster, each rank also proves its own Ed25519 identity, so
a process holding only the coordinator's key can take no rank: neither a party's nor
the dealer's, and it cannot abort the rendezvous either.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from _helpers.ports import free_ports
from _helpers.threads import in_thread

from smpc import handshake
from smpc.handshake import HandshakeError, Hello
from smpc.messages import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)

KEY = b"the-coordinators-shared-key"
WORLD = 3  # parties 0..2, the dealer is rank 3


def _hello(rank: int, **changes) -> Hello:
    fields = dict(rank=rank, world_size=WORLD, protocol=PROTOCOL_VERSION, provider="TTP")
    return Hello(**{**fields, "mode": "secure", "precision_bits": 16, "pid": rank, **changes})


@pytest.fixture(scope="module")
def identities() -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Each rank's own key pair: (private keys, roster of public keys)."""
    pairs = {rank: handshake.generate_identity() for rank in range(WORLD + 1)}
    return {r: p[0] for r, p in pairs.items()}, {r: p[1] for r, p in pairs.items()}


def _rank(rendezvous, rank, identities, timeout=20.0):
    private, roster = identities
    return in_thread(
        handshake.handshake,
        rendezvous,
        KEY,
        _hello(rank),
        timeout,
        identity=private[rank],
        roster=roster,
    )


@pytest.mark.parametrize("claimed", [1, WORLD], ids=["party", "dealer"])
def test_the_coordinators_key_alone_takes_no_rank_and_the_real_ranks_still_join(
    identities, claimed
):
    rendezvous = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    address = handshake.rendezvous_address(rendezvous)
    hub, hub_out = _rank(rendezvous, 0, identities)
    # the forger knows the shared key and the (public) roster, not the rank's private key
    forged = replace(_hello(claimed), roster=handshake.roster_digest(identities[1]))
    forger, forger_out = in_thread(handshake.join, address, KEY, forged, 20.0)
    forger.join(20)
    assert isinstance(forger_out[0], HandshakeError)
    assert "check 'rank identity'" in str(forger_out[0])
    assert "the shared key alone takes no rank" in str(forger_out[0])
    others = [_rank(rendezvous, r, identities) for r in range(1, WORLD + 1)]
    for thread, _ in [*others, (hub, hub_out)]:
        thread.join(30)
    assert hub_out == ["ok"] and [out for _, out in others] == [["ok"]] * WORLD


def test_a_rank_refuses_a_hub_without_rank_0s_identity(identities):
    """A coordinator that binds the rendezvous first cannot pose as rank 0 either."""
    roster = identities[1]
    rendezvous = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    address = handshake.rendezvous_address(rendezvous)
    fake_roster = dict(roster)
    fake_private, fake_roster[0] = handshake.generate_identity()
    hub, _ = in_thread(
        handshake.run_hub,
        address,
        KEY,
        replace(_hello(0), roster=handshake.roster_digest(roster)),
        1.5,
        ids=handshake.Identities(fake_private, fake_roster),
        linger=0.5,
    )
    rank, outcome = _rank(rendezvous, 1, identities, timeout=10.0)
    rank.join(20)
    hub.join(20)
    assert isinstance(outcome[0], HandshakeError)
    assert "check 'rank identity'" in str(outcome[0]) and "not rank 0" in str(outcome[0])


def test_an_incomplete_or_foreign_identity_is_refused_before_anything_is_sent(identities):
    private, roster = identities
    with pytest.raises(ValueError, match="both this rank's private key"):
        handshake.Identities(private[1], None).check(1)
    with pytest.raises(ValueError, match="not rank 1's key in the roster"):
        handshake.Identities(private[2], roster).check(1)
