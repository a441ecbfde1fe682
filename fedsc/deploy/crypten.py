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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedsc.deploy.aggregators import SecureSiteAggregator, ask_values
from fedsc.deploy.fleet import Fleet
from fedsc.deploy.records import OWNER_PREFIX, arrays_of, params_of
from fedsc.deploy.remote import RemoteValue
from fedsc.deploy.site import step_phase, step_slot
from smpc import sealed
from smpc.aggregator import owned_columns
from smpc.crypten_backend import CryptenAggregator
from smpc.flatten import flatten
from smpc.ledger import Traffic


def owner_runs(
    layout: Mapping[str, Sequence[int]], owners: Sequence[Mapping[str | None, Sequence[int]]]
) -> list[list[tuple[int, int]]]:
    """Per owner, the ``(start, stop)`` runs of its rows in the flat value of ``layout``.

    ``layout``: the value's structure (key -> shape; public), flattened as the sites
    flatten it (sorted keys); ``owners`` as :meth:`smpc.Aggregator.weighted_mean_to_owners`.
    """
    import torch

    template = {k: torch.zeros(tuple(int(n) for n in shape)) for k, shape in layout.items()}
    _, spec = flatten(template)
    columns, _ = owned_columns(spec, owners)
    out = []
    for cols in columns:  # contiguous runs of the sorted columns
        cols = np.sort(np.asarray(cols, dtype=np.int64))
        breaks = np.flatnonzero(np.diff(cols) != 1) + 1
        out.append([(int(run[0]), int(run[-1]) + 1) for run in np.split(cols, breaks) if len(run)])
    return out


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
        #: The last owner-revealed operation's sealed deliveries, by site (relayed as is).
        self._delivered: dict[str, dict[str | None, np.ndarray]] = {}
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

    def weighted_mean_to_owners(
        self,
        contributions: Sequence[Any],
        weights: Sequence[float],
        owners: Sequence[Mapping[str | None, Sequence[int]]],
        deliver: Callable[[int, dict[str | None, np.ndarray]], None],
    ) -> float:
        """Owner-revealed weighted mean: each site's rows reach that site only, sealed.

        The sites share ``[w x, w]`` under a context that lists every owner's runs
        (``owned``; each site checks its own and the parties check that the result
        slices go exactly there). The parties seal each site's slices (and the total
        weight) under the key they share with it; the coordinator relays them unopened:
        ``deliver(b, arrays)`` gets site ``b``'s delivery (:data:`OWNER_PREFIX` keys), which
        its ClientApp opens. The coordinator learns the total weight only.

        The value's structure (key -> shape, public) is the references' ``layout``
        parameter: the runs are fixed in the context before any site seals.
        """
        self._check_open()
        refs = self._refs(contributions)
        w = self._checked_weights(weights, len(refs))
        layout = refs[0].params.get("layout")
        if layout is None or any(r.params.get("layout") != layout for r in refs):
            raise ValueError(
                "an owner-revealed mean needs the value's structure in every reference's "
                "'layout' parameter (key -> shape), the same for all sites."
            )
        if len(owners) != len(refs):
            raise ValueError(f"owners: one entry per site, got {len(owners)} for {len(refs)}.")
        runs = owner_runs(layout, owners)
        bits = self.backend.sum_precision_bits
        out, _, _ = self._run("sum", refs, w, bits, owned=runs, op="weighted_mean_to_owners")
        for b, ref in enumerate(refs):
            deliver(b, dict(self._delivered[ref.site]))
        self._delivered = {}
        return float(np.asarray(out).reshape(-1)[0])

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
        owned: list[list[tuple[int, int]]] | None = None,
        op: str | None = None,
    ) -> tuple[np.ndarray, dict[str, Any], RemoteValue]:
        refs = self._refs(contributions)
        start = time.perf_counter()
        names = [r.site for r in refs]
        slots = {step_slot(r.step, r.params) for r in refs}
        if len(slots) != 1:
            raise ValueError(f"one aggregation of different protocol steps: {sorted(slots)}.")
        # every site checks its own entries (slot, weight, the site list, its owned runs)
        # before it seals; the parties check that all shares carry this one context
        context = sealed.make_context(
            secrets.token_hex(16),
            names,
            slots.pop(),
            None if weights is None else dict(zip(names, map(float, weights), strict=True)),
            phase=step_phase(refs[0].step),
            owned=None if owned is None else dict(zip(names, owned, strict=True)),
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
            kind, blobs, names, context, size, bits if decode else None, owned
        )
        what = {"argmax": "argmax_index", "sum": "sum_weighted" if weights is not None else "sum"}
        if owned is not None:
            # relayed, never opened here: each site's sealed slices and the context
            slices = stats.pop("owner_slices")
            self._delivered = {
                name: {
                    f"{OWNER_PREFIX}context": np.frombuffer(context.encode(), np.uint8).copy(),
                    f"{OWNER_PREFIX}bits": np.asarray(bits, dtype=np.int64),
                    **{
                        f"{OWNER_PREFIX}{rank}/{lo}/{hi}": np.frombuffer(blob, np.uint8).copy()
                        for rank, lo, hi, blob in slices[c]
                    },
                }
                for c, name in enumerate(names)
            }
            traffic = Traffic(coordinator_received={"sum_weights": []}, **stats)
            traffic.client_received = {
                f"client[{c}]": {"owned": [sum(hi - lo for lo, hi in runs)], "sum_weights": []}
                for c, runs in enumerate(owned)
            }
        else:
            traffic = Traffic(coordinator_received={what[kind]: [size]}, **stats)
        op = op or ("weighted_mean" if weights is not None else kind)
        self._record(
            op, np.broadcast_to(0.0, (len(refs), size)), traffic, time.perf_counter() - start
        )
        return out, metas[0], refs[0]
