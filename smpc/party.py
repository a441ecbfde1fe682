"""A CrypTen computation party (or the trusted dealer) as a long-running process.

One process per rank. Ranks ``0 .. world_size - 1`` are computation parties; rank
``world_size`` is the trusted dealer (CrypTen's ``TTPServer``), which only hands out
correlated randomness (Beaver triples, ...) for comparisons and never sees a share.

A party talks to two kinds of peers:

* the other parties and the dealer, through ``torch.distributed`` (gloo), set up by
  ``crypten.init()`` from the ``RENDEZVOUS``/``WORLD_SIZE``/``RANK`` environment;
* the coordinator, through a :class:`multiprocessing.connection.Connection`: a pipe when
  the coordinator started the party itself, or an authenticated TCP connection
  (``listen=(host, port)``) when the party runs on another machine.

Protocol on the coordinator connection (all messages pickled dicts unless noted)::

    party -> coordinator   {"ready": True, "rank", "pid", "world_size", "provider", ...}
    coordinator -> party   {"op": "sum" | "argmax", "id", "n_clients", "size", ...}
    coordinator -> party   n_clients raw int64 messages: share `rank` of client c
    party -> coordinator   {"ack": id}                       (all shares received)
    party -> coordinator   {"ok": True, "id", "stats": {...}}, then its raw int64 result share
    coordinator -> party   {"op": "close"}

CrypTen's own ``run_multiprocess`` is not used: it starts processes per call, hangs when a
function returns a large object, and cannot reuse parties across rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from typing import Any

import numpy as np

from smpc import sharing

#: Environment variable holding the shared key that authenticates the coordinator.
AUTHKEY_ENV = "SMPC_AUTHKEY"
#: Arrays up to this many values are kept verbatim by ``record_received`` (digests beyond).
RECORD_MAX_VALUES = 1 << 20


def debug_seeds(seed: int, rank: int) -> tuple[int, int, int]:
    """(next, local, global) CrypTen seeds of ``rank`` in debug mode, as signed int64."""
    state = np.random.SeedSequence([seed, rank]).generate_state(2, np.uint64)
    global_state = np.random.SeedSequence([seed, 2**32]).generate_state(1, np.uint64)
    as_signed = [int(v) - 2**63 for v in (*state, *global_state)]
    return as_signed[0], as_signed[1], as_signed[2]


def _configure_crypten(
    provider: str, precision_bits: int, mode: str, world_size: int, rank: int, rendezvous: str
) -> Any:
    os.environ["RENDEZVOUS"] = rendezvous
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["RANK"] = str(rank)
    os.environ.setdefault("DISTRIBUTED_BACKEND", "gloo")

    import torch

    # Parties share the coordinator's cores; one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    from smpc.crypten_compat import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = provider
    crypten.cfg.encoder.precision_bits = precision_bits
    crypten.cfg.functions.max_method = "pairwise"
    crypten.cfg.communicator.verbose = True  # count bytes and rounds for the ledger
    crypten.cfg.debug.debug_mode = mode == "debug"
    return crypten


def serve(
    rank: int | None = None,
    world_size: int | None = None,
    rendezvous: str | None = None,
    *,
    conn: Connection | None = None,
    listen: tuple[str, int] | None = None,
    authkey: bytes | None = None,
    provider: str = "TTP",
    mode: str = "secure",
    seed: int | None = None,
    precision_bits: int = 16,
    record_received: bool = False,
) -> None:
    """Run one CrypTen party (or the dealer, ``rank == world_size``) until told to close.

    Parameters
    ----------
    rank, world_size, rendezvous
        Position in the MPC and the ``torch.distributed`` init method (``tcp://HOST:PORT``
        or ``file:///path``); default to CrypTen's ``RANK``/``WORLD_SIZE``/``RENDEZVOUS``
        environment variables.
    conn
        Connection to the coordinator (local parties started by the coordinator).
    listen
        ``(host, port)`` to accept the coordinator's authenticated TCP connection on
        (remote parties). Exactly one of ``conn``/``listen`` for parties; neither for the dealer.
    authkey
        Shared key for ``listen``; defaults to the ``SMPC_AUTHKEY`` environment variable.
    provider
        ``"TTP"`` (trusted dealer, required in secure mode) or ``"TFP"`` (debug only).
    mode
        ``"secure"`` or ``"debug"`` (seeded CrypTen randomness, not private).
    seed
        Debug-mode seed.
    precision_bits
        Fixed-point precision of the shares (must match the clients').
    record_received
        Keep what this party received from clients (instrumentation for tests).
    """
    rank = int(os.environ["RANK"]) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", 3)) if world_size is None else int(world_size)
    rendezvous = os.environ.get("RENDEZVOUS") if rendezvous is None else rendezvous
    if not rendezvous:
        raise ValueError(
            "no rendezvous: pass rendezvous='tcp://HOST:PORT' (or set RENDEZVOUS) and use "
            "the same value for every party and the dealer."
        )
    if not 0 <= rank <= world_size:
        raise ValueError(
            f"rank must be in 0..{world_size} (0..{world_size - 1} parties, {world_size} "
            f"the dealer), got {rank}."
        )
    if provider not in ("TTP", "TFP"):
        raise ValueError(f"provider must be 'TTP' or 'TFP', got {provider!r}.")
    if mode == "secure" and provider != "TTP":
        raise ValueError(
            "secure mode requires provider='TTP': with 'TFP' party 0 generates all "
            "randomness and could recover the other parties' inputs."
        )
    crypten = _configure_crypten(provider, precision_bits, mode, world_size, rank, rendezvous)
    if rank == world_size:
        if provider != "TTP":
            raise ValueError("rank == world_size is the dealer, which exists only for 'TTP'.")
        _serve_dealer(crypten, mode, seed)
        return
    if (conn is None) == (listen is None):
        raise ValueError("a party needs exactly one of conn= (local) or listen= (remote).")

    crypten.init()
    if mode == "debug":
        crypten.manual_seed(*debug_seeds(0 if seed is None else seed, rank))
    listener = None
    if conn is None:
        key = authkey if authkey is not None else os.environ.get(AUTHKEY_ENV, "").encode()
        if not key:
            raise ValueError(
                f"a remote party needs a shared authkey: set {AUTHKEY_ENV} (same value on "
                "the coordinator) or pass authkey=."
            )
        assert listen is not None
        listener = Listener(tuple(listen), authkey=key)
        conn = _accept(listener)
    try:
        conn.send(
            {
                "ready": True,
                "rank": rank,
                "pid": os.getpid(),
                "world_size": world_size,
                "provider": provider,
                "mode": mode,
                "precision_bits": precision_bits,
            }
        )
        _Party(crypten, rank, conn, precision_bits, record_received).loop()
    finally:
        conn.close()
        if listener is not None:
            listener.close()
        crypten.uninit()


def _accept(listener: Listener) -> Connection:
    """Accept the first connection that authenticates; reachability probes (the
    coordinator checks the port before connecting) and wrong keys are skipped."""
    while True:
        try:
            return listener.accept()
        except AuthenticationError:
            print("smpc.party: rejected a connection with a wrong authkey", file=sys.stderr)
        except (EOFError, OSError):
            continue


def _serve_dealer(crypten: Any, mode: str, seed: int | None) -> None:
    import torch

    if mode == "debug":
        # The dealer draws its per-party seeds from torch's default generator.
        torch.manual_seed(0 if seed is None else seed)
    # TTPServer joins the process group (crypten.init inside) and answers requests from
    # party 0 until party 0's crypten.uninit() sends "terminate".
    crypten.mpc.provider.TTPServer()
    if crypten.is_initialized():
        crypten.uninit()


class _Party:
    """The command loop of one computation party."""

    def __init__(
        self, crypten: Any, rank: int, conn: Connection, precision_bits: int, record: bool
    ) -> None:
        self.crypten = crypten
        self.rank = rank
        self.conn = conn
        self.precision_bits = precision_bits
        self.record = record
        self.records: list[dict[str, Any]] = []
        self.counters = {"operations": 0, "messages": 0, "bytes": 0}

    def loop(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return  # coordinator gone: shut down
            op = message.get("op")
            if op == "close":
                return
            try:
                if op in ("sum", "argmax"):
                    self._aggregate(message)
                elif op == "counters":
                    self.conn.send(dict(self.counters))
                elif op == "received":
                    self.conn.send(self.records)
                    self.records = []
                else:
                    raise ValueError(f"unknown command {op!r}")
            except (EOFError, BrokenPipeError, ConnectionResetError):
                return
            except Exception:
                self.conn.send({"ok": False, "rank": self.rank, "error": traceback.format_exc()})

    def _receive_shares(self, message: dict[str, Any]) -> np.ndarray:
        """Receive one share per client; returns a (n_clients, size) int64 matrix."""
        n_clients, size = int(message["n_clients"]), int(message["size"])
        # Parties 1.. may receive each client's mask as its 32-byte key (pseudo-random
        # secret sharing, see smpc.sharing.split_compressed) and expand it here.
        keyed = bool(message.get("compressed")) and self.rank > 0
        shares = np.empty((n_clients, size), dtype=np.int64)
        for client in range(n_clients):
            if keyed:
                key = self.conn.recv_bytes(maxlength=sharing.KEY_BYTES)
                shares[client] = sharing.expand_key(key, size)
                nbytes = len(key)
            else:
                nbytes = self.conn.recv_bytes_into(shares[client])
                if nbytes != shares[client].nbytes:
                    raise ValueError(
                        f"client {client}: expected {size} int64 values, got {nbytes} bytes"
                    )
            self.counters["messages"] += 1
            self.counters["bytes"] += nbytes
            if self.record:
                self._record(message, client, shares[client])
        return shares

    def _record(self, message: dict[str, Any], client: int, share: np.ndarray) -> None:
        self.records.append(
            {
                "op": message["op"],
                "id": message["id"],
                "client": client,
                "sha256": hashlib.sha256(share.tobytes()).hexdigest(),
                "values": share.copy() if share.size <= RECORD_MAX_VALUES else None,
            }
        )

    def _aggregate(self, message: dict[str, Any]) -> None:
        import torch

        crypten = self.crypten
        start = time.perf_counter()
        shares = self._receive_shares(message)
        self.counters["operations"] += 1
        self.conn.send({"ack": message["id"], "rank": self.rank})
        crypten.reset_communication_stats()
        if message["op"] == "sum":
            # Additions of shares are local (sum mod 2^64): no interaction, nothing revealed.
            result_share = shares[0]
            for row in shares[1:]:
                np.add(result_share, row, out=result_share)
        else:
            n_clients = shares.shape[0]
            # Encoded values are integers in the ring: precision 0 keeps every product exact.
            values = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(shares), precision=0)
            # Ties go to the lowest client index: compare K*x + (K-1-i), public operations
            # on shares (local multiply, party 0 adds the constant), all keys distinct.
            offsets = torch.arange(n_clients - 1, -1, -1, dtype=torch.long).unsqueeze(1)
            keys = values * n_clients + offsets
            index = keys.argmax(dim=0, one_hot=False)
            result_share = index._tensor.share.numpy()
        stats = crypten.comm.get().get_communication_stats()
        reply = {
            "ok": True,
            "id": message["id"],
            "rank": self.rank,
            "stats": {"bytes": int(stats["bytes"]), "rounds": int(stats["rounds"])},
            "seconds": time.perf_counter() - start,
        }
        self.conn.send(reply)
        # Each party sends its share of the result to the coordinator only: no party ever
        # holds the aggregate in the clear (CrypTen's reveal() would give it to them).
        self.conn.send_bytes(np.ascontiguousarray(result_share, dtype=np.int64))


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m smpc.party --rank R --world-size 3 --rendezvous ...``."""
    parser = argparse.ArgumentParser(
        prog="smpc.party",
        description="Run one CrypTen computation party (rank < world size) or the trusted "
        "dealer (rank == world size) for a remote coordinator.",
    )
    parser.add_argument("--rank", type=int, default=None, help="default: $RANK")
    parser.add_argument("--world-size", type=int, default=None, help="default: $WORLD_SIZE or 3")
    parser.add_argument("--rendezvous", default=None, help="tcp://HOST:PORT (default: $RENDEZVOUS)")
    parser.add_argument(
        "--listen",
        type=_parse_address,
        default=None,
        help="HOST:PORT where the coordinator connects (parties only); key in $SMPC_AUTHKEY",
    )
    parser.add_argument("--provider", default="TTP", choices=["TTP", "TFP"])
    parser.add_argument("--mode", default="secure", choices=["secure", "debug"])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--precision-bits", type=int, default=16)
    args = parser.parse_args(argv)
    serve(
        args.rank,
        args.world_size,
        args.rendezvous,
        listen=args.listen,
        provider=args.provider,
        mode=args.mode,
        seed=args.seed,
        precision_bits=args.precision_bits,
    )


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in tests
    main(sys.argv[1:])
