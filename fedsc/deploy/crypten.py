"""The CrypTen parties in deployment: sites share their values straight to the parties.

Each site secret-shares its own value and seals share ``i`` for party ``i``
(:mod:`smpc.sealed`, AES-256-GCM under a key only that site and that party hold); the
sealed shares ride on Flower's messages to the coordinator, which relays them to the
parties unopened (:meth:`smpc.crypten_backend.CryptenAggregator.aggregate_sealed`). The
parties compute sums and FedscGen's argmax as in simulation and send their result shares
to the coordinator, which reconstructs only the aggregate. The coordinator never holds a
share vector or an unmasked value; a site that stops answering stops the run with its
name (no dropout tolerance: an additive sharing needs every share).

The parties run elsewhere (``fedsc party`` on three hosts of non-colluding operators, each
with its own ``$SMPC_CLIENT_SECRET``); the coordinator connects to them (``parties`` run
config: ``HOST:PORT,HOST:PORT,HOST:PORT``; key in ``$SMPC_AUTHKEY``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedsc.deploy.aggregators import SecureSiteAggregator, ask_values
from fedsc.deploy.fleet import Fleet
from fedsc.deploy.records import arrays_of, params_of
from fedsc.deploy.remote import RemoteValue
from fedsc.deploy.site import step_phase, step_slot
from smpc import sealed
from smpc.crypten_backend import CryptenAggregator
from smpc.ledger import Traffic


def parse_parties(text: str) -> list[tuple[str, int]]:
    """``"HOST:PORT,HOST:PORT,..."`` -> addresses."""
    out = []
    for item in str(text).split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"party address {item!r} is not HOST:PORT.")
        out.append((host, int(port)))
    return out


class DeployedCrypten(SecureSiteAggregator):
    """Sums, weighted means and argmax over the sites by the CrypTen parties (private)."""

    name = "crypten"

    def __init__(
        self,
        fleet: Fleet,
        parties: Sequence[tuple[str, int]],
        *,
        authkey: bytes | None = None,
        timeout: float = 120.0,
        backend: CryptenAggregator | None = None,
    ) -> None:
        super().__init__()
        self.fleet = fleet
        #: The connection to the parties (``backend``: one already open, e.g. local ones).
        self.backend = backend or CryptenAggregator(
            parties=len(parties), party_addresses=list(parties), authkey=authkey, timeout=timeout
        )

    @property
    def privacy_note(self) -> str:
        """What the coordinator learns."""
        return (
            "private (CrypTen parties, deployed): sites seal their shares for the parties; "
            "the coordinator relays ciphertext and learns only aggregates"
        )

    def weighted_mean(
        self, contributions: Sequence[Any], weights: Sequence[float], *, reference: Any = None
    ) -> Any:
        """Weighted mean; each site shares ``[w x, w]``."""
        self._check_open()
        w = self._checked_weights(weights, len(contributions))
        out, meta, ref = self._run("sum", contributions, w, self.backend.sum_precision_bits)
        return self._rebuild(ref, meta, out[:-1] / out[-1])

    def sum(self, contributions: Sequence[Any], *, reference: Any = None) -> Any:
        """Element-wise sum."""
        self._check_open()
        out, meta, ref = self._run("sum", contributions, None, self.backend.sum_precision_bits)
        return self._rebuild(ref, meta, out)

    def argmax(self, columns: Sequence[Any]) -> np.ndarray:
        """Per column, the winning site (ties: lowest index); only the winners are revealed."""
        self._check_open()
        out, _, _ = self._run("argmax", columns, None, self.backend.precision_bits, decode=False)
        return np.asarray(out, dtype=np.int64)

    def close(self) -> None:
        """Disconnect from the parties."""
        self.backend.close()
        super().close()

    def _run(
        self,
        kind: str,
        contributions: Sequence[Any],
        weights: np.ndarray | None,
        bits: int,
        decode: bool = True,
    ) -> tuple[np.ndarray, dict[str, Any], RemoteValue]:
        refs = self._refs(contributions)
        start = time.perf_counter()
        names = [r.site for r in refs]
        slots = {step_slot(r.step, r.params) for r in refs}
        if len(slots) != 1:
            raise ValueError(f"one aggregation of different protocol steps: {sorted(slots)}.")
        # every site checks its own entries (slot, weight, the site list) before it seals;
        # the parties check that all shares carry this one context
        context = sealed.make_context(
            secrets.token_hex(16),
            names,
            slots.pop(),
            None if weights is None else dict(zip(names, map(float, weights), strict=True)),
            phase=step_phase(refs[0].step),
        )
        for i, ref in enumerate(refs):
            extra: dict[str, Any] = {
                "context": context,
                "bits": bits,
                "parties": self.backend.parties,
                "site_name": ref.site,
            }
            if weights is not None:
                extra["weight"] = float(weights[i])
            refs[i] = RemoteValue(
                ref.site, ref.step, {**ref.params, **extra}, ref.arrays, ref.torch, ref.scalars
            )
        replies = ask_values(self.fleet, refs, "crypten")
        metas = [params_of(replies[s])["meta"] for s in names]
        if any(m != metas[0] for m in metas[1:]):
            raise ValueError(f"the sites' values differ in structure: {metas}.")
        blobs = []
        for s in names:
            arrays = arrays_of(replies[s])
            blobs.append([arrays[f"sealed/{i}"].tobytes() for i in range(self.backend.parties)])
        size = int(sum(np.prod(sh) for sh in metas[0]["shapes"])) + (
            1 if weights is not None else 0
        )
        out, stats = self.backend.aggregate_sealed(
            kind, blobs, names, context, size, bits if decode else None
        )
        what = {"argmax": "argmax_index", "sum": "sum_weighted" if weights is not None else "sum"}
        traffic = Traffic(coordinator_received={what[kind]: [size]}, **stats)
        op = "weighted_mean" if weights is not None else kind
        self._record(
            op, np.broadcast_to(0.0, (len(refs), size)), traffic, time.perf_counter() - start
        )
        return out, metas[0], refs[0]
