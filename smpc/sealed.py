"""Client shares sealed for one party, so they can travel through the coordinator.

In a deployment each client (site) secret-shares its own value and sends share ``i`` to
party ``i``. The shares ride on the coordinator's channels (Flower's messages to the
coordinator, the coordinator's channel to each party) but are sealed with AES-256-GCM
under a key only that client and that party hold, so the coordinator relays ciphertext
it cannot open: it never holds a share or an unmasked value.

Keys: party ``i`` holds a secret ``S_i``; the key of client ``s`` at party ``i`` is
``HMAC-SHA256(S_i, "smpc-client-key|" + s)`` (:func:`client_key`), given to client ``s``
when it joins (the party operator derives it; the coordinator never sees it).

The associated data binds a sealed share to its operation: the *context* (a JSON string
the coordinator chooses: a fresh operation id, the list of clients taking part, the
protocol step it serves and, for a weighted mean, every client's weight; each client
checks its own entries before it seals, see ``fedsc.deploy.site``), the client's name and
the party's rank. A party (:class:`ContextPolicy`) accepts an operation only if every
share carries the same context, that context lists exactly the clients whose shares it
received (at least two), exactly the agreed client set (configured, or the set of the
session's first operation), a step not served before, and an id never used before: a
coordinator cannot run an "aggregate" of one client's share, difference two subsets,
compare a pair of clients by argmax, ask for the same step twice, or replay a share
into another operation.

Owner-revealed results travel back the same way: party ``i`` seals its slice of client
``b``'s row for client ``b`` (:func:`seal_result`; associated data labelled ``result``,
so a share a client sealed can never pass for a result slice or the reverse), and the
coordinator relays ciphertext it cannot open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smpc import sharing

#: Environment variable holding a party's secret S (hex), read by ``python -m smpc.party``.
SECRET_ENV = "SMPC_CLIENT_SECRET"
#: Environment variable naming the agreed client set (comma-separated), read by parties.
AGREED_ENV = "SMPC_AGREED_CLIENTS"
NONCE_BYTES = 12
TAG_BYTES = 16


class SealError(ValueError):
    """A sealed share failed to open or does not belong to the operation."""


def party_secret(secret: bytes, rank: int) -> bytes:
    """Party ``rank``'s own secret derived from a deployment secret (one per host in practice)."""
    return hmac.new(secret, f"smpc-party|{rank}".encode(), hashlib.sha256).digest()


def client_key(secret: bytes, client: str) -> bytes:
    """The 32-byte key client ``client`` shares with the party holding ``secret``."""
    return hmac.new(secret, f"smpc-client-key|{client}".encode(), hashlib.sha256).digest()


def _aad(context: str, client: str, rank: int) -> bytes:
    return json.dumps([context, client, int(rank)]).encode()


def seal(key: bytes, payload: bytes, context: str, client: str, rank: int) -> bytes:
    """``nonce || AES-256-GCM(payload)`` bound to (context, client, rank)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, payload, _aad(context, client, rank))


def open_sealed(key: bytes, blob: bytes, context: str, client: str, rank: int) -> bytes:
    """Open a sealed share; :class:`SealError` if the key, context, client or rank differ."""
    try:
        return AESGCM(key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(context, client, rank)
        )
    except Exception as err:  # cryptography's InvalidTag
        raise SealError(
            f"a sealed share of client {client!r} does not open at party {rank} for this "
            "operation (wrong key, or it was made for another operation or party)."
        ) from err


def sealed_size(payload_bytes: int) -> int:
    """Bytes of a sealed payload of ``payload_bytes``."""
    return NONCE_BYTES + payload_bytes + TAG_BYTES


def seal_shares(
    values: np.ndarray,
    keys: list[bytes],
    *,
    client: str,
    context: str,
    precision_bits: int,
    scale: float = 1.0,
    extra: float | None = None,
) -> list[bytes]:
    """A client's value secret-shared for ``len(keys)`` parties and sealed for each.

    Party 0 gets the full share ``encode(scale * values [, extra]) - masks``; parties
    ``1..`` get the 32-byte keys of their masks (pseudo-random secret sharing, as the
    in-process clients of :class:`smpc.crypten_backend.CryptenAggregator` do).
    """
    values = np.ascontiguousarray(values, dtype=np.float64).ravel()
    size = values.size + (0 if extra is None else 1)
    mask_keys = [os.urandom(sharing.KEY_BYTES) for _ in keys[1:]]
    first = np.empty(size, dtype=np.int64)
    sharing.write_first_share(values, scale, mask_keys, first, precision_bits, extra)
    payloads = [first.tobytes(), *mask_keys]
    return [
        seal(key, payload, context, client, rank)
        for rank, (key, payload) in enumerate(zip(keys, payloads, strict=True))
    ]


def _result_aad(context: str, owner: str, rank: int, start: int, stop: int) -> bytes:
    return json.dumps(["result", context, str(owner), int(rank), int(start), int(stop)]).encode()


def seal_result(
    key: bytes, payload: bytes, context: str, owner: str, rank: int, start: int, stop: int
) -> bytes:
    """Party ``rank``'s result slice ``[start, stop)`` sealed for its owner ``owner``."""
    nonce = os.urandom(NONCE_BYTES)
    aad = _result_aad(context, owner, rank, start, stop)
    return nonce + AESGCM(key).encrypt(nonce, payload, aad)


def open_result(
    key: bytes, blob: bytes, context: str, owner: str, rank: int, start: int, stop: int
) -> bytes:
    """Open a result slice (:func:`seal_result`); :class:`SealError` if anything differs."""
    try:
        aad = _result_aad(context, owner, rank, start, stop)
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except Exception as err:  # cryptography's InvalidTag
        raise SealError(
            f"party {rank}'s result slice [{start}, {stop}) for {owner!r} does not open for "
            "this operation (wrong key, or it was sealed for another owner, operation or slice)."
        ) from err


def open_owner_slices(
    keys: list[bytes],
    slices: list[tuple[int, int, int, bytes]],
    context: str,
    client: str,
    precision_bits: int,
) -> dict[int, np.ndarray]:
    """A client's owner-revealed runs: its slices from every party, opened and decoded.

    ``keys[i]`` is the client's key at party ``i``; ``slices`` the ``(rank, start, stop,
    blob)`` the coordinator relayed. Returns ``{start: values}`` per run (the last run is
    the total weight); a missing party's slice or one that does not open is refused.
    """
    by_run: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for rank, start, stop, blob in slices:
        payload = open_result(keys[rank], blob, context, client, rank, start, stop)
        by_run.setdefault((start, stop), {})[rank] = np.frombuffer(payload, np.int64)
    out = {}
    for (start, _), shares in sorted(by_run.items()):
        if sorted(shares) != list(range(len(keys))):
            raise SealError(
                f"run starting at {start}: slices from parties {sorted(shares)}, need all "
                f"{len(keys)}."
            )
        out[start] = sharing.reconstruct_decode(
            [shares[r] for r in range(len(keys))], precision_bits
        )
    return out


def make_context(
    op: str,
    clients: list[str],
    step: str,
    weights: dict[str, float] | None = None,
    phase: str = "",
    owned: dict[str, list[tuple[int, int]]] | None = None,
) -> str:
    """The context string of one operation (the coordinator's proposal; sites check it).

    ``phase`` names the part of the protocol whose operations share one site set (e.g.
    training rounds, then a correction that held-out clients join). ``owned`` (an
    owner-revealed weighted mean): client -> the ``(start, stop)`` runs of the result
    revealed to it alone; the coordinator then gets the total weight only, and every
    party sends exactly those slices (:func:`check_owner_destinations`).
    """
    body: dict[str, Any] = {
        "op": str(op),
        "clients": [str(c) for c in clients],
        "step": str(step),
        "phase": str(phase),
    }
    if weights is not None:
        body["weights"] = {str(k): float(v) for k, v in weights.items()}
    if owned is not None:
        body["owned"] = {str(k): [[int(a), int(b)] for a, b in v] for k, v in owned.items()}
    return json.dumps(body, sort_keys=True)


def check_owner_destinations(
    body: dict[str, Any], names: list[str], destinations: list[list[int]] | None, size: int
) -> None:
    """A party's check of where an operation's result slices go (owner-revealed means).

    A context with ``owned`` (:func:`make_context`) must come with exactly these
    destinations: each client its own runs and the total weight (the last value), the
    coordinator (``-1``) the total weight only; a context without ``owned`` with none
    (the coordinator gets the whole result, as the sites agreed when they sealed). So a
    coordinator cannot ask a party for a client's row (``[-1, start, stop]``) or hand one
    client's row to another: the sites checked the context's ``owned`` before they sealed
    (``fedsc.deploy.scbatchprox``), and the context is bound to every sealed share.
    """
    owned = body.get("owned")
    if owned is None:
        if destinations is not None:
            raise SealError(
                "check 'owner slices': the operation sends result slices to owners, but "
                "the sites sealed their shares for a result revealed whole (no 'owned' in "
                "the context)."
            )
        return
    want = sorted(
        [[c, int(lo), int(hi)] for c, name in enumerate(names) for lo, hi in owned.get(name, [])]
        + [[c, size - 1, size] for c in range(len(names))]
        + [[-1, size - 1, size]]
    )
    if destinations is None or sorted(list(map(int, d)) for d in destinations) != want:
        raise SealError(
            "check 'owner slices': the result slices the coordinator asks for differ from "
            "the context's: each site gets only its own runs and the total weight, the "
            "coordinator only the total weight (a slice of a row to the coordinator or to "
            "another site would reveal that row)."
        )


def parse_context(context: str) -> dict[str, Any]:
    """A context's fields; :class:`SealError` naming what is malformed."""
    try:
        body = json.loads(context)
        body["op"] = str(body["op"])
        body["clients"] = [str(c) for c in body["clients"]]
    except (ValueError, KeyError, TypeError) as err:
        raise SealError(f"malformed operation context {context!r}") from err
    return dict(body)


def agreed_from_env() -> frozenset[str] | None:
    """The agreed client set in ``$SMPC_AGREED_CLIENTS`` (None when unset)."""
    text = os.environ.get(AGREED_ENV, "").strip()
    return frozenset(c.strip() for c in text.split(",") if c.strip()) or None


@dataclass
class ContextPolicy:
    """A party's checks of the operations of one session (one coordinator connection).

    Semi-honest parties that do not collude still compute whatever a coordinator asks; a
    coordinator that deviates could isolate one client by differencing two site sets
    (``{a, b, c}`` then ``{b, c}``), by an argmax over a pair, or by asking the same step
    twice. Each check below refuses one of those, naming it.

    Attributes
    ----------
    agreed
        The client set every operation must list (``$SMPC_AGREED_CLIENTS`` or
        ``--sites``); None: per phase (the context's ``phase``), the set of the phase's
        first sealed operation.
    used_ops, used_steps
        Operation ids and protocol steps already served.
    """

    agreed: frozenset[str] | None = None
    by_phase: dict[str, frozenset[str]] = field(default_factory=dict)
    used_ops: set[str] = field(default_factory=set)
    used_steps: set[str] = field(default_factory=set)

    def check(self, context: str, clients: list[str], kind: str = "sum") -> dict[str, Any]:
        """Check one operation's context against the shares that arrived; record it."""
        body = parse_context(context)
        op, listed = body["op"], body["clients"]
        if op in self.used_ops:
            raise SealError(
                f"check 'replay': operation {op!r} was already run: a replayed share is refused."
            )
        if (
            len(listed) < 2
            or sorted(listed) != sorted(clients)
            or len(set(clients)) != len(clients)
        ):
            raise SealError(
                f"check 'site set': the operation lists clients {listed} but shares came from "
                f"{clients}; an aggregate needs every listed client, at least two, each once."
            )
        phase = str(body.get("phase", ""))
        agreed = self.agreed or self.by_phase.get(phase) or frozenset(listed)
        if frozenset(listed) != agreed:
            what = (
                "an argmax over a subset compares those sites pairwise"
                if kind == "argmax"
                else "two different site sets difference one site's value"
            )
            raise SealError(
                f"check 'agreed sites': the operation lists {sorted(listed)}, not the agreed "
                f"sites {sorted(agreed)}; refused: {what}."
            )
        step = body.get("step")
        if not isinstance(step, str) or not step:
            raise SealError(
                "check 'step': the operation names no protocol step; every sealed operation "
                "must say which step it serves (smpc.sealed.make_context)."
            )
        if step in self.used_steps:
            raise SealError(
                f"check 'same step twice': step {step!r} was already aggregated in this "
                "session; a second aggregate of the same step is refused."
            )
        if self.agreed is None:
            self.by_phase[phase] = agreed
        self.used_ops.add(op)
        self.used_steps.add(step)
        return body
