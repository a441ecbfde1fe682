"""Pre-rendezvous handshake: authenticated ranks and matching settings before gloo starts.

``torch.distributed`` (gloo) trusts whoever reaches its rendezvous and waits (30 min) for
missing ranks; a party started with another world size, or a process claiming a rank it
does not hold, would hang every party. So before ``crypten.init()`` every rank of a
``tcp://HOST:PORT`` rendezvous runs this handshake with rank 0, which listens on exactly
``HOST:PORT`` (the port is released again before torch's store binds it):

1. rank 0 (the *hub*) sends a fresh 32-byte challenge;
2. the rank answers ``Hello`` (rank, world size, protocol version, provider, mode,
   precision bits, its own 32-byte nonce) and ``HMAC-SHA256(key, "hello" | challenge |
   hello)``; the hub checks it with :func:`hmac.compare_digest`. A wrong MAC (a process
   without the shared key) is refused and takes no rank slot; a rank already held is
   refused with a message naming it; a different world size, protocol or setting aborts
   the whole handshake (every rank gets the reason and exits);
3. once every rank (parties ``0..n-1`` and the dealer ``n`` with the ``TTP`` provider) has
   joined, the hub answers each ``go`` with ``HMAC(key, "reply" | nonce | reply)``, so
   each rank also knows the hub holds the key.

Per-role identities (a *roster*): the shared key authenticates the group, and the
coordinator holds it too (it connects to the parties with it). With a roster, each rank
also has its own Ed25519 key pair and every rank holds the roster of public keys (rank ->
key, the same file everywhere; its digest is part of ``Hello``): a hello must carry the
signature of the claimed rank's private key over the same bytes as the MAC, and the
hub's ``go`` the signature of rank 0. So a process holding only the shared key (the
coordinator, or anyone it gives it to) cannot join as a party or as the dealer; it is
refused before it takes a rank and, because the signature is checked before the
settings, it cannot abort the rendezvous either. Without a roster the handshake is
the shared-key one above (a warning says that any key holder may take a free rank).

Everything is bounded by the start-up timeout. Frames are a 4-byte length + a JSON
object; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: Bumped whenever the handshake changes.
HANDSHAKE_VERSION = 2
#: Environment variables naming a rank's identity file and the roster file.
IDENTITY_ENV = "SMPC_IDENTITY"
ROSTER_ENV = "SMPC_ROSTER"
_MAX_FRAME = 1 << 16
_NONCE = 32


class HandshakeError(RuntimeError):
    """The ranks do not agree (world size, settings, rank) or could not authenticate."""


@dataclass(frozen=True)
class Hello:
    """What a rank claims; the hub compares everything but ``rank`` and ``pid``."""

    rank: int
    world_size: int
    protocol: int
    provider: str
    mode: str
    precision_bits: int
    pid: int = 0
    #: Digest of the roster of per-rank public keys ("" without one).
    roster: str = ""

    def differences(self, other: Hello) -> dict[str, tuple[Any, Any]]:
        """Settings (not rank/pid) where ``self`` and ``other`` differ: name -> (mine, theirs)."""
        mine, theirs = asdict(self), asdict(other)
        return {
            k: (mine[k], theirs[k])
            for k in ("world_size", "protocol", "provider", "mode", "precision_bits", "roster")
            if mine[k] != theirs[k]
        }


# ---------------------------------------------------------------------- identities
def generate_identity() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair for one rank: (private, public), 32 raw bytes each."""
    from cryptography.hazmat.primitives import serialization

    private = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return (
        private.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
        private.public_key().public_bytes(raw, serialization.PublicFormat.Raw),
    )


def roster_digest(roster: dict[int, bytes] | None) -> str:
    """A short digest of a roster (every rank must hold the same one)."""
    if not roster:
        return ""
    text = json.dumps({str(r): k.hex() for r, k in sorted(roster.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_identity(path: str | Path) -> bytes:
    """A rank's private key from a file holding it in hex."""
    key = bytes.fromhex(Path(path).read_text().strip())
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 32-byte Ed25519 private key in hex.")
    return key


def load_roster(path: str | Path) -> dict[int, bytes]:
    """Every rank's public key from a JSON file ``{"0": "hex", "1": ...}``."""
    body = json.loads(Path(path).read_text())
    roster = {int(r): bytes.fromhex(str(k)) for r, k in body.items()}
    if any(len(k) != 32 for k in roster.values()):
        raise ValueError(f"{path}: every rank's public key must be 32 bytes in hex.")
    return roster


def identities_from_env() -> tuple[bytes | None, dict[int, bytes] | None]:
    """(identity, roster) from the files in ``$SMPC_IDENTITY`` / ``$SMPC_ROSTER``."""
    identity = os.environ.get(IDENTITY_ENV)
    roster = os.environ.get(ROSTER_ENV)
    return (
        load_identity(identity) if identity else None,
        load_roster(roster) if roster else None,
    )


def _sign(identity: bytes | None, label: bytes, nonce: bytes, body: dict[str, Any]) -> str:
    if identity is None:
        return ""
    data = label + nonce + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return Ed25519PrivateKey.from_private_bytes(identity).sign(data).hex()


def _verify(public: bytes, sig: Any, label: bytes, nonce: bytes, body: dict[str, Any]) -> bool:
    data = label + nonce + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(str(sig)), data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identities:
    """A rank's private key and the roster (both None: shared-key handshake only)."""

    identity: bytes | None = None
    roster: dict[int, bytes] | None = None

    def check(self, rank: int) -> None:
        """Refuse an incomplete configuration, naming the fix."""
        if (self.identity is None) != (self.roster is None):
            raise ValueError(
                f"rank {rank}: per-role identities need both this rank's private key "
                f"(${IDENTITY_ENV} / --identity) and the roster (${ROSTER_ENV} / --roster)."
            )
        if self.roster is not None and self.identity is not None:
            public = Ed25519PrivateKey.from_private_bytes(self.identity).public_key()
            from cryptography.hazmat.primitives import serialization

            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            if self.roster.get(rank) != raw:
                raise ValueError(
                    f"rank {rank}: this identity is not rank {rank}'s key in the roster; "
                    "give each rank its own key file."
                )


def _mac(key: bytes, label: bytes, nonce: bytes, body: dict[str, Any]) -> str:
    data = label + nonce + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _reply_frame(key: bytes, ids: Identities, nonce: bytes, body: dict[str, Any]) -> dict[str, Any]:
    """A hub's answer: MAC under the shared key, and rank 0's signature with a roster."""
    frame = {**body, "mac": _mac(key, b"reply", nonce, body)}
    if ids.identity is not None:
        frame["sig"] = _sign(ids.identity, b"reply", nonce, body)
    return frame


def _send(sock: socket.socket, body: dict[str, Any]) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("the peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> dict[str, Any]:
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    if n > _MAX_FRAME:
        raise HandshakeError(f"handshake frame of {n} bytes exceeds {_MAX_FRAME}")
    body = json.loads(_recv_exact(sock, n).decode())
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise HandshakeError("handshake frame is not an object with a 'type'")
    return body


def expected_ranks(hello: Hello) -> list[int]:
    """Every rank of the MPC: parties ``0..n-1`` and, with ``TTP``, the dealer ``n``."""
    return list(range(hello.world_size + (1 if hello.provider == "TTP" else 0)))


def _who(rank: int, world_size: int) -> str:
    return f"the dealer (rank {rank})" if rank == world_size else f"rank {rank}"


def run_hub(
    address: tuple[str, int],
    key: bytes,
    mine: Hello,
    timeout: float,
    *,
    ready: threading.Event | None = None,
    linger: float = 10.0,
    ids: Identities | None = None,
) -> None:
    """Rank 0: listen on ``address`` until every rank joined, then release the port.

    Raises :class:`HandshakeError` (after telling every joined rank why) on a mismatch or
    when ranks are missing after ``timeout`` seconds. After a mismatch the hub keeps
    answering late ranks with the reason for up to ``linger`` seconds. With ``ids`` (a
    roster), a rank is admitted only with its own identity's signature.
    """
    ids = ids or Identities()
    ids.check(mine.rank)
    deadline = time.monotonic() + timeout
    want = [r for r in expected_ranks(mine) if r != mine.rank]
    joined: dict[int, tuple[socket.socket, bytes, str]] = {}  # rank -> (sock, nonce, peer)
    refused: list[str] = []
    server = socket.create_server(address, reuse_port=False)
    server.settimeout(0.2)
    try:
        if ready is not None:
            ready.set()
        while set(want) - set(joined):
            if time.monotonic() > deadline:
                missing = ", ".join(_who(r, mine.world_size) for r in want if r not in joined)
                extra = f"; refused: {'; '.join(refused)}" if refused else ""
                raise _abort(
                    key,
                    ids,
                    joined,
                    f"{missing} did not join the rendezvous at {address[0]}:{address[1]} "
                    f"within the start-up timeout of {timeout:g} s{extra}",
                )
            try:
                sock, peer_addr = server.accept()
            except TimeoutError:
                continue
            peer = f"{peer_addr[0]}:{peer_addr[1]}"
            try:
                outcome = _admit(sock, peer, key, mine, joined, deadline, ids)
            except (OSError, EOFError, ValueError, HandshakeError) as err:
                outcome = f"connection from {peer} dropped during the handshake ({err})"
            if isinstance(outcome, str):
                refused.append(outcome)
                log.warning("rendezvous: %s", outcome)
                sock.close()
            elif isinstance(outcome, HandshakeError):
                sock.close()
                error = _abort(key, ids, joined, str(outcome))
                # Tell ranks that arrive later why, instead of letting them time out.
                told = {*joined, int(getattr(outcome, "rank", -1))}
                _linger(
                    server,
                    key,
                    ids,
                    str(outcome),
                    min(deadline, time.monotonic() + linger),
                    {r for r in want if r not in told},
                )
                raise error
        for sock, nonce, _ in joined.values():
            body = {"type": "go", "ranks": len(want) + 1}
            _send(sock, _reply_frame(key, ids, nonce, body))
        # Let every rank close first, so no TIME_WAIT socket holds the port on this side.
        for sock, _, _ in joined.values():
            sock.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
            try:
                sock.recv(1)
            except OSError:
                pass
    finally:
        server.close()
        for sock, _, _ in joined.values():
            sock.close()


def _admit(
    sock: socket.socket,
    peer: str,
    key: bytes,
    mine: Hello,
    joined: dict[int, tuple[socket.socket, bytes, str]],
    deadline: float,
    ids: Identities,
) -> str | HandshakeError | None:
    """Authenticate one connection: None (joined), a refusal (str) or a fatal mismatch."""
    sock.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
    challenge = os.urandom(_NONCE)
    _send(sock, {"type": "challenge", "nonce": challenge.hex(), "version": HANDSHAKE_VERSION})
    body = _recv(sock)
    mac = body.pop("mac", "")
    sig = body.pop("sig", "")
    if body.get("type") != "hello" or not isinstance(mac, str):
        _send(sock, {"type": "refused", "reason": "expected an authenticated hello"})
        return f"{peer} sent {body.get('type')!r} instead of a hello"
    if not hmac.compare_digest(mac, _mac(key, b"hello", challenge, body)):
        # Unauthenticated peer: tell it nothing but that its key is wrong.
        _send(sock, {"type": "refused", "reason": "authentication failed: wrong key"})
        return f"refused {peer}: authentication failed (wrong key); it took no rank"
    try:
        nonce = bytes.fromhex(body["nonce"])
        theirs = Hello(**body["hello"])
    except (KeyError, TypeError, ValueError) as err:
        raise HandshakeError(f"{peer} sent a malformed hello ({err})") from None

    def reply(kind: str, reason: str) -> None:
        _send(sock, _reply_frame(key, ids, nonce, {"type": kind, "reason": reason}))

    who = f"{_who(theirs.rank, theirs.world_size)} (pid {theirs.pid} at {peer})"
    if ids.roster is not None:
        # Before the settings: only a rank's own key may take it, or abort the rendezvous.
        public = ids.roster.get(theirs.rank)
        if public is None or not _verify(public, sig, b"hello", challenge, body):
            reply(
                "refused",
                f"check 'rank identity': not signed with the identity key of "
                f"{_who(theirs.rank, theirs.world_size)} in the roster; the shared key alone "
                "takes no rank",
            )
            return (
                f"refused {who}: check 'rank identity' failed (it holds the shared key but "
                f"not {_who(theirs.rank, theirs.world_size)}'s identity key); it took no rank"
            )
    diff = mine.differences(theirs)
    if diff:
        listed = ", ".join(f"{k} {t!r} (rank {mine.rank} has {m!r})" for k, (m, t) in diff.items())
        reason = f"{who} runs with {listed}; start every rank with the same settings"
        reply("abort", reason)
        return _fatal(reason, theirs.rank)
    if theirs.rank not in expected_ranks(mine) or theirs.rank == mine.rank:
        reason = (
            f"{who} claims rank {theirs.rank}, but world size {mine.world_size} has ranks "
            f"{expected_ranks(mine)} and rank {mine.rank} hosts the rendezvous"
        )
        if theirs.rank == mine.rank:
            reply("refused", f"duplicate rank {theirs.rank}: {reason}")
            return f"refused duplicate rank {theirs.rank} from {who}: rank {mine.rank} is the host"
        reply("abort", reason)
        return _fatal(reason, theirs.rank)
    if theirs.rank in joined:
        holder = joined[theirs.rank][2]
        reason = f"duplicate rank {theirs.rank}: already held by the process at {holder}"
        reply("refused", reason)
        return f"refused duplicate rank {theirs.rank} from {who}: already held by {holder}"
    sock.settimeout(None)
    joined[theirs.rank] = (sock, nonce, f"{peer} (pid {theirs.pid})")
    log.info("rendezvous: %s joined", who)
    return None


def _linger(
    server: socket.socket,
    key: bytes,
    ids: Identities,
    reason: str,
    until: float,
    untold: set[int],
) -> None:
    """Answer authenticated ranks with the abort until ``until`` or all ``untold`` heard it."""
    while untold and time.monotonic() < until:
        try:
            sock, _ = server.accept()
        except TimeoutError:
            continue
        with sock:
            try:
                sock.settimeout(2.0)
                challenge = os.urandom(_NONCE)
                _send(sock, {"type": "challenge", "nonce": challenge.hex()})
                body = _recv(sock)
                mac = body.pop("mac", "")
                body.pop("sig", None)
                if not isinstance(mac, str) or not hmac.compare_digest(
                    mac, _mac(key, b"hello", challenge, body)
                ):
                    _send(sock, {"type": "refused", "reason": "authentication failed: wrong key"})
                    continue
                answer = {"type": "abort", "reason": reason}
                nonce = bytes.fromhex(str(body.get("nonce", "")))
                _send(sock, _reply_frame(key, ids, nonce, answer))
                with contextlib.suppress(KeyError, TypeError):
                    untold.discard(int(body["hello"]["rank"]))
            except (OSError, EOFError, ValueError, HandshakeError):
                continue


def _fatal(reason: str, rank: int) -> HandshakeError:
    error = HandshakeError(reason)
    error.rank = rank  # type: ignore[attr-defined]
    return error


def _abort(
    key: bytes,
    ids: Identities,
    joined: dict[int, tuple[socket.socket, bytes, str]],
    reason: str,
) -> HandshakeError:
    for sock, nonce, _ in joined.values():
        answer = {"type": "abort", "reason": reason}
        try:
            _send(sock, _reply_frame(key, ids, nonce, answer))
        except OSError:
            pass
    log.error("rendezvous aborted: %s", reason)
    return HandshakeError(reason)


def join(
    address: tuple[str, int],
    key: bytes,
    mine: Hello,
    timeout: float,
    ids: Identities | None = None,
) -> None:
    """Rank > 0: authenticate to the hub at ``address`` and wait until every rank joined.

    With ``ids`` (a roster) the hello is signed with this rank's identity and the hub
    must sign with rank 0's.
    """
    ids = ids or Identities()
    ids.check(mine.rank)
    deadline = time.monotonic() + timeout
    where = f"{address[0]}:{address[1]}"
    last: BaseException | None = None
    while True:
        if time.monotonic() > deadline:
            raise HandshakeError(
                f"rank 0's rendezvous at {where} did not complete the handshake within the "
                f"start-up timeout of {timeout:g} s ({last or 'no answer'})"
            )
        try:
            sock = socket.create_connection(address, timeout=1.0)
        except OSError as err:
            last = err
            time.sleep(0.2)
            continue
        try:
            return _join_once(sock, key, mine, where, deadline, ids)
        except (OSError, EOFError) as err:  # hub not ready or restarted: retry
            last = err
            time.sleep(0.2)
        finally:
            sock.close()


def _join_once(
    sock: socket.socket, key: bytes, mine: Hello, where: str, deadline: float, ids: Identities
) -> None:
    # The hub challenges at once; silence means something else holds the port (e.g. the
    # MPC already formed and torch's store listens there).
    sock.settimeout(max(0.1, min(5.0, deadline - time.monotonic())))
    try:
        challenge_msg = _recv(sock)
    except TimeoutError:
        raise HandshakeError(
            f"{where} sent no challenge within 5 s: it is not (or no longer) an smpc "
            "rendezvous; the MPC may already have formed without this rank"
        ) from None
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    if challenge_msg.get("type") != "challenge":
        raise HandshakeError(f"{where} is not an smpc rendezvous (sent {challenge_msg!r:.80})")
    challenge = bytes.fromhex(str(challenge_msg.get("nonce", "")))
    nonce = os.urandom(_NONCE)
    body = {"type": "hello", "hello": asdict(mine), "nonce": nonce.hex()}
    frame = {**body, "mac": _mac(key, b"hello", challenge, body)}
    if ids.identity is not None:
        frame["sig"] = _sign(ids.identity, b"hello", challenge, body)
    _send(sock, frame)
    reply = _recv(sock)
    mac = reply.pop("mac", None)
    sig = reply.pop("sig", "")
    if mac is None and reply.get("type") == "refused":
        raise HandshakeError(
            f"the rendezvous at {where} refused this process: {reply.get('reason')} "
            "(use the same SMPC_AUTHKEY as every other rank)"
        )
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, b"reply", nonce, reply)):
        raise HandshakeError(f"the rendezvous at {where} could not prove it holds the shared key")
    if ids.roster is not None and not _verify(ids.roster[0], sig, b"reply", nonce, reply):
        raise HandshakeError(
            f"check 'rank identity': the rendezvous at {where} did not sign with rank 0's "
            "identity key in the roster; it is not rank 0"
        )
    if reply.get("type") == "go":
        return
    what = "refused this rank" if reply.get("type") == "refused" else "aborted"
    raise HandshakeError(f"the rendezvous at {where} {what}: {reply.get('reason')}")


def rendezvous_address(rendezvous: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``tcp://HOST:PORT`` rendezvous, None for ``file://``."""
    if not rendezvous.startswith("tcp://"):
        return None
    host, _, port = rendezvous[len("tcp://") :].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected tcp://HOST:PORT, got {rendezvous!r}")
    return host.strip("[]"), int(port)


def handshake(
    rendezvous: str,
    key: bytes,
    mine: Hello,
    timeout: float,
    *,
    identity: bytes | None = None,
    roster: dict[int, bytes] | None = None,
) -> None:
    """Run the handshake for ``mine`` (hub for rank 0, else join); no-op for ``file://``.

    ``identity``/``roster``: per-role identities (see the module docstring); without
    them a warning says that any holder of the shared key may take a free rank.
    """
    address = rendezvous_address(rendezvous)
    if address is None:
        return
    ids = Identities(identity, roster)
    ids.check(mine.rank)
    if roster is None:
        log.warning(
            "rank %d: rendezvous without per-role identities: any holder of the shared key "
            "(the coordinator too) may take a free rank; give each rank --identity and "
            "--roster (docs/smpc.md)",
            mine.rank,
        )
    mine = replace(mine, roster=roster_digest(roster))
    if mine.rank == 0:
        run_hub(address, key, mine, timeout, ids=ids)
    else:
        join(address, key, mine, timeout, ids)


# ---------------------------------------------------------------------- coordinator link
_LINK_MAGIC = b"SMAUTH1"
_LINK_REFUSED = b"SMAUTH1-REFUSED"


def _recv_within(conn: Any, timeout: float, maxlength: int = 256) -> bytes:
    if not conn.poll(timeout):
        raise TimeoutError(f"no authentication answer within {timeout:g} s")
    return bytes(conn.recv_bytes(maxlength))


def authenticate_party_side(conn: Any, key: bytes, timeout: float = 10.0) -> None:
    """A party checks the coordinator on a fresh connection (mutual HMAC-SHA256).

    Replaces ``multiprocessing.connection``'s own handshake (HMAC-MD5 compared with
    ``==`` before Python 3.12, and no timeout: a silent peer would block ``accept``).
    Only ``send_bytes``/``recv_bytes`` are used. Raises ``AuthenticationError``.
    """
    from multiprocessing import AuthenticationError

    challenge = os.urandom(_NONCE)
    conn.send_bytes(_LINK_MAGIC + challenge)
    answer = _recv_within(conn, timeout)
    nonce, mac = answer[:_NONCE], answer[_NONCE:]
    good = hmac.new(key, b"coordinator" + challenge + nonce, hashlib.sha256).digest()
    if len(nonce) != _NONCE or not hmac.compare_digest(mac, good):
        conn.send_bytes(_LINK_REFUSED)
        raise AuthenticationError("the connecting process does not hold the shared key")
    conn.send_bytes(hmac.new(key, b"party" + nonce + challenge, hashlib.sha256).digest())


def authenticate_coordinator_side(conn: Any, key: bytes, timeout: float = 10.0) -> None:
    """The coordinator's half of :func:`authenticate_party_side`."""
    from multiprocessing import AuthenticationError

    hello = _recv_within(conn, timeout)
    if not hello.startswith(_LINK_MAGIC) or len(hello) != len(_LINK_MAGIC) + _NONCE:
        raise AuthenticationError("the peer is not an smpc party (unexpected greeting)")
    challenge = hello[len(_LINK_MAGIC) :]
    nonce = os.urandom(_NONCE)
    conn.send_bytes(
        nonce + hmac.new(key, b"coordinator" + challenge + nonce, hashlib.sha256).digest()
    )
    proof = _recv_within(conn, timeout)
    if proof == _LINK_REFUSED:
        raise AuthenticationError("the party refused this coordinator's key")
    good = hmac.new(key, b"party" + nonce + challenge, hashlib.sha256).digest()
    if not hmac.compare_digest(proof, good):
        raise AuthenticationError("the party could not prove it holds the shared key")


def main(argv: list[str] | None = None) -> None:
    """``python -m smpc.handshake keygen FILE``: a rank's key pair (private key to FILE).

    Prints the public key (hex) for the roster, which every rank and no one else needs:
    ``{"0": "<rank 0's public key>", "1": ..., "3": "<the dealer's>"}``.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m smpc.handshake")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write a rank's private key, print its public key")
    keygen.add_argument("file", help="where the private key (hex) goes; created mode 0600")
    args = parser.parse_args(argv)
    if os.path.exists(args.file):
        parser.error(f"{args.file} exists; a rank's key is never overwritten (remove it first)")
    private, public = generate_identity()
    fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    sys.stdout.write(public.hex() + "\n")


if __name__ == "__main__":  # pragma: no cover - a command-line helper
    main()
