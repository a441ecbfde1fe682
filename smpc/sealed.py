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
the coordinator chooses: a fresh operation id and the list of clients taking part), the
client's name and the party's rank. A party accepts an operation only if every share
carries the same context, that context lists exactly the clients whose shares it
received (at least two), and its id was never used before: a coordinator cannot run an
"aggregate" of one client's share, or replay a share into another operation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smpc import sharing

#: Environment variable holding a party's secret S (hex), read by ``python -m smpc.party``.
SECRET_ENV = "SMPC_CLIENT_SECRET"
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


def check_context(context: str, clients: list[str], used: set[str]) -> dict[str, Any]:
    """A party's check of one operation's context (see the module docstring)."""
    try:
        body = json.loads(context)
        op, listed = str(body["op"]), [str(c) for c in body["clients"]]
    except (ValueError, KeyError, TypeError) as err:
        raise SealError(f"malformed operation context {context!r}") from err
    if op in used:
        raise SealError(f"operation {op!r} was already run: a replayed share is refused.")
    if len(listed) < 2 or sorted(listed) != sorted(clients) or len(set(clients)) != len(clients):
        raise SealError(
            f"the operation lists clients {listed} but shares came from {clients}; an "
            "aggregate needs every listed client, at least two, each once."
        )
    return dict(body)
