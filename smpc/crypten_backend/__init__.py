"""CrypTen backend: additive secret sharing among three computation parties.

The coordinator (this process) plays the clients' side of the protocol: for each client
it encodes the contribution in fixed point and splits it into three shares
(:mod:`smpc.sharing`), and sends share ``i`` of every client to party ``i`` only
(parties 1.. receive the 32-byte key of their mask, :mod:`smpc.masks`). The parties
(:mod:`smpc.party`, started and reaped by :mod:`smpc.party_pool`) add the shares, or run
CrypTen's comparison protocol for argmax with a trusted dealer, and each sends its share
of the result to the coordinator, which alone reconstructs the aggregate. Messages are
the typed dataclasses of :mod:`smpc.messages` over a :mod:`smpc.channel`. See
``docs/smpc.md`` for the trust model.

The aggregator is split by what it does, one module each: :mod:`~.aggregator` (options,
start-up, instrumentation, shutdown), :mod:`~.operations` (sums, weighted means, argmax),
:mod:`~.exchange` (one round trip with the parties), :mod:`~.masks_ahead` (prepared masks),
:mod:`~.sealed_ops` (deployed clients' sealed shares), :mod:`~.owners` (owner-revealed
results) and :mod:`~.state` (the state they share). Its options are
:class:`smpc.options.CryptenOptions`.
"""

from __future__ import annotations

from smpc.crypten_backend.aggregator import CryptenAggregator
from smpc.crypten_backend.owners import OwnerEndpoint, SealedRelay, owned_runs
from smpc.party_pool import PartyError

_runs = owned_runs  # the name fedsc.deploy.crypten imports

__all__ = ["CryptenAggregator", "OwnerEndpoint", "PartyError", "SealedRelay", "owned_runs"]
