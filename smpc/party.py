"""A computation party (or the trusted dealer): the command loop and its entry points.

One party per rank. Ranks ``0 .. world_size - 1`` are computation parties; rank
``world_size`` is the trusted dealer (CrypTen's ``TTPServer``), which only hands out
correlated randomness (Beaver triples, ...) for comparisons and never sees a share.

A party talks to two kinds of peers:

* the other parties and the dealer, through ``torch.distributed`` (gloo), set up by
  ``crypten.init()`` from the ``RENDEZVOUS``/``WORLD_SIZE``/``RANK`` environment (only
  ``argmax`` needs them: sums are local additions of shares);
* the coordinator, through a :class:`~smpc.channel.Channel` carrying the typed messages
  of :mod:`smpc.messages` (a pipe to a local party process, optionally with shares in a
  :class:`~smpc.shared_buffer.SharedBuffer`; an authenticated TCP connection to a remote
  party; or an in-process channel to a party thread in tests).

:class:`PartyLoop` is the same in all cases; :func:`serve` runs it in a party process,
:func:`serve_in_thread` in a thread (additions only, no CrypTen). A local party process
answers ``Ready`` and serves sums while it joins the process group in a background thread
(:class:`LazyCrypten`); ``argmax`` waits for the join.

CrypTen's own ``run_multiprocess`` is not used: it starts processes per call, hangs when a
function returns a large object, and cannot reuse parties across rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from typing import Any

import numpy as np

from smpc import handshake, process_guard
from smpc import messages as msg
from smpc.channel import Channel, ConnectionChannel
from smpc.framing import FrameError
from smpc.masks import KEY_BYTES, MaskStream, expand_key, sum_masks
from smpc.options import check_mode_provider
from smpc.party_cli import build_parser
from smpc.prepared import PartyMasks
from smpc.shared_buffer import SharedBuffer

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

#: Environment variable holding the shared key that authenticates the coordinator.
AUTHKEY_ENV = "SMPC_AUTHKEY"
#: Arrays up to this many values are kept verbatim by ``record_received`` (digests beyond).
RECORD_MAX_VALUES = 1 << 20
#: Exit code of a rank that could not join the MPC (``crypten.init()``): usually because
#: another rank died first, which the coordinator then names instead.
JOIN_FAILED_EXIT_CODE = 3


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
    startup_timeout: float = 120.0,
    gloo_interface: str | None = None,
    parent_pids: Sequence[int] = (),
    cleanup: Sequence[str] = (),
    agreed_clients: Sequence[str] | None = None,
    identity: bytes | None = None,
    roster: dict[int, bytes] | None = None,
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
    startup_timeout
        Seconds for the handshake of a ``tcp://`` rendezvous (:mod:`smpc.handshake`):
        every rank authenticates with the shared key and must agree on world size,
        protocol and settings before gloo starts, or every rank exits with the reason.
    gloo_interface
        Network interface gloo binds (``GLOO_SOCKET_IFNAME``); default: loopback for a
        ``file://`` rendezvous, else the interface this host uses to reach the rendezvous.
    parent_pids
        Local parties: exit as soon as any of these processes (the coordinator) dies.
    cleanup
        Local parties: folders to remove when exiting because the coordinator died.
    agreed_clients
        The sites every sealed operation must list (default ``$SMPC_AGREED_CLIENTS``).
    identity, roster
        This rank's own Ed25519 private key and every rank's public key (rank -> raw
        32 bytes; :func:`smpc.handshake.load_identity`, :func:`smpc.handshake.load_roster`):
        the rendezvous then admits a rank only with that rank's key, so the shared key
        (which the coordinator holds) takes no rank. Default ``$SMPC_IDENTITY`` /
        ``$SMPC_ROSTER`` (files).
    """
    if parent_pids or cleanup:
        process_guard.die_with(parent_pids, cleanup)
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
    check_mode_provider(mode, provider)
    if rank == world_size and provider != "TTP":
        raise ValueError("rank == world_size is the dealer, which exists only for 'TTP'.")
    if rank < world_size and (conn is None) == (listen is None):
        raise ValueError("a party needs exactly one of conn= (local) or listen= (remote).")
    key = authkey if authkey is not None else os.environ.get(AUTHKEY_ENV, "").encode()
    if rank < world_size and conn is None and not key:
        raise ValueError(
            f"a remote party needs a shared authkey: set {AUTHKEY_ENV} (same value on "
            "the coordinator) or pass authkey=."
        )
    if handshake.rendezvous_address(rendezvous) is not None:
        if not key:
            raise ValueError(
                f"a tcp:// rendezvous needs the shared key: set {AUTHKEY_ENV} (same value on "
                "every rank and the coordinator) or pass authkey=."
            )
        hello = handshake.Hello(
            rank=rank,
            world_size=world_size,
            protocol=msg.PROTOCOL_VERSION,
            provider=provider,
            mode=mode,
            precision_bits=precision_bits,
            pid=os.getpid(),
        )
        env_identity, env_roster = handshake.identities_from_env()
        identity = env_identity if identity is None else identity
        roster = env_roster if roster is None else roster
        handshake.handshake(
            rendezvous, key, hello, startup_timeout, identity=identity, roster=roster
        )
        _exit_unless_mpc_forms(rank, startup_timeout)
    _bind_gloo(rendezvous, gloo_interface)
    crypten = _configure_crypten(provider, precision_bits, mode, world_size, rank, rendezvous)
    if rank == world_size:
        _serve_dealer(crypten, mode, seed)
        return

    lazy: LazyCrypten | None = None
    if conn is None:
        # Remote parties join the MPC before they listen (the coordinator waits for it).
        LazyCrypten(crypten, rank, mode, seed).initialise()
    else:
        # Local parties answer Ready at once and serve sums (additions of shares, no
        # CrypTen) while the process group with the other ranks and the dealer forms in
        # the background; argmax waits for it; a failed join exits this party (code 3).
        lazy = LazyCrypten(crypten, rank, mode, seed)
        lazy.start()
    listener = None
    if conn is None:
        assert listen is not None and key  # checked before the handshake
        # No authkey for Listener: the mutual HMAC-SHA256 of smpc.handshake runs instead,
        # with a timeout, so a silent or keyless peer never blocks nor takes the slot.
        listener = Listener((str(listen[0]), int(listen[1])))
        conn = _accept(listener, key)
    channel = ConnectionChannel(conn)
    log.info("party %d (pid %d) joined the MPC (%s, %s)", rank, os.getpid(), mode, provider)
    try:
        channel.send(
            msg.Ready(
                rank=rank,
                pid=os.getpid(),
                world_size=world_size,
                provider=provider,
                mode=mode,
                precision_bits=precision_bits,
            )
        )
        PartyLoop(
            rank, channel, crypten if lazy is None else lazy, record_received, agreed_clients
        ).run()
    finally:
        channel.close()
        if listener is not None:
            listener.close()
        if lazy is not None:
            # Party 0's uninit tells the dealer to stop: let a pending init finish first.
            lazy.join(startup_timeout)
        if crypten.is_initialized():
            crypten.uninit()


class LazyCrypten:
    """``crypten.init()`` (and the debug seeds) of one party, now or in a background thread.

    :meth:`get` returns the initialised CrypTen module, waiting for the background
    initialisation. A failed background initialisation prints the reason and exits the
    party with code 3, so the coordinator's next operation raises ``PartyError`` naming
    it; :meth:`get` raises ``RuntimeError`` naming the party should it still be asked.
    """

    def __init__(self, crypten: Any, rank: int, mode: str, seed: int | None) -> None:
        self.crypten = crypten
        self.rank = rank
        self.mode = mode
        self.seed = seed
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def initialise(self) -> None:
        """Join the process group with the other ranks and the dealer (blocking)."""
        start = time.perf_counter()
        try:
            self.crypten.init()
            if self.mode == "debug":
                self.crypten.manual_seed(
                    *debug_seeds(0 if self.seed is None else self.seed, self.rank)
                )
        except BaseException as err:
            self.error = err
            log.exception("party %d: CrypTen initialisation failed", self.rank)
            raise
        finally:
            self.seconds = time.perf_counter() - start
            self._done.set()
        log.info("party %d joined the MPC in %.2f s", self.rank, self.seconds)

    def start(self) -> None:
        """Initialise in a daemon thread."""

        def run() -> None:
            try:
                self.initialise()
            except BaseException as err:
                # Fail fast, as an eager start-up failure would: the coordinator names
                # this party (exit code 3) in its next operation, not a silent peer.
                print(
                    f"smpc.party: error: rank {self.rank}: CrypTen initialisation failed: {err!r}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(JOIN_FAILED_EXIT_CODE)

        self._thread = threading.Thread(
            target=run, name=f"smpc-crypten-init-{self.rank}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` s for a background initialisation to end."""
        self._done.wait(timeout)

    def get(self) -> Any:
        """The initialised CrypTen module (waits for the background initialisation)."""
        self._done.wait()
        if self.error is not None:
            raise RuntimeError(
                f"party {self.rank}: CrypTen initialisation (joining the other parties and the "
                f"dealer) failed: {self.error!r}"
            ) from self.error
        return self.crypten


def _exit_unless_mpc_forms(rank: int, timeout: float) -> None:
    """Exit if torch.distributed is not up ``timeout`` s after the handshake.

    A rank that dies between the handshake and ``crypten.init()`` would leave the others
    waiting in gloo's rendezvous (30 min by default); this bounds it by the start-up timeout.
    """

    def watch() -> None:
        time.sleep(timeout)
        dist = sys.modules.get("torch.distributed")  # no import: it may still be loading
        if dist is None or not dist.is_initialized():
            print(
                f"smpc.party: error: rank {rank}: every rank passed the handshake but the MPC "
                f"did not form within the start-up timeout of {timeout:g} s (a rank exited?)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(JOIN_FAILED_EXIT_CODE)

    threading.Thread(target=watch, name="smpc-formation-watch", daemon=True).start()


def _bind_gloo(rendezvous: str, interface: str | None) -> None:
    """Pin gloo to one interface (``GLOO_SOCKET_IFNAME``) instead of the host name's address."""
    if interface is None and os.environ.get("GLOO_SOCKET_IFNAME"):
        return  # set explicitly by the operator
    if interface is None:
        address = handshake.rendezvous_address(rendezvous)
        local = "127.0.0.1"
        if address is not None:
            local = process_guard.source_address_towards(*address) or address[0]
        interface = process_guard.interface_for(local)
        if interface is None:
            log.warning(
                "no interface holds %s: gloo binds where the host name resolves; pass "
                "--gloo-interface (GLOO_SOCKET_IFNAME)",
                local,
            )
            return
    os.environ["GLOO_SOCKET_IFNAME"] = interface
    log.info("gloo binds interface %s", interface)


def _accept(listener: Listener, key: bytes) -> Connection:
    """Accept the first connection that authenticates.

    Reachability probes (the coordinator checks the port before connecting), silent peers
    and wrong keys are skipped.
    """
    while True:
        try:
            conn = listener.accept()
        except OSError:
            continue
        try:
            handshake.authenticate_party_side(conn, key)
            return conn
        except AuthenticationError as err:
            peer = listener.last_accepted
            log.warning("rejected a connection from %s: %s", peer, err)
            print(f"smpc.party: rejected a connection from {peer}: {err}", file=sys.stderr)
        except (EOFError, OSError, TimeoutError):
            pass
        conn.close()


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


class PartyLoop:
    """The command loop of one computation party, over any :class:`~smpc.channel.Channel`.

    Parameters
    ----------
    rank
        This party's rank.
    channel
        Connection to the coordinator.
    crypten
        The imported CrypTen module (after ``crypten.init()``), a :class:`LazyCrypten`
        (initialising in the background; ``argmax`` waits for it), or None for a party
        that serves additions only (``argmax`` then fails with a clear error).
    record
        Keep what this party received from clients and every value it opened with the
        other parties inside an ``argmax`` (instrumentation for tests; see
        :func:`recording_openings`).
    agreed_clients
        The client set every sealed operation must list (default ``$SMPC_AGREED_CLIENTS``,
        else per phase the set of the phase's first sealed operation;
        :class:`smpc.sealed.ContextPolicy`).
    """

    def __init__(
        self,
        rank: int,
        channel: Channel,
        crypten: Any | None = None,
        record: bool = False,
        agreed_clients: Sequence[str] | None = None,
    ) -> None:
        from smpc import sealed

        self.rank = rank
        self.channel = channel
        self.crypten = crypten
        self.record = record
        self.records: list[tuple[dict[str, Any], np.ndarray | None]] = []
        #: With ``record``: what this party opened (learned in the clear) from the others.
        self.opened: list[tuple[dict[str, Any], np.ndarray]] = []
        self.counters = {"operations": 0, "messages": 0, "bytes": 0}
        self._buffer: SharedBuffer | None = None
        #: The checks of sealed operations (agreed clients, replays, a step twice).
        self._policy = sealed.ContextPolicy(
            frozenset(agreed_clients) if agreed_clients else sealed.agreed_from_env()
        )
        #: This party's secret for deployed clients' sealed shares (``$SMPC_CLIENT_SECRET``).
        self._client_secret: bytes | None = None
        #: Masks of a coming operation, expanding in the background (:mod:`smpc.prepared`).
        self._prepared: PartyMasks | None = None
        self._spent: PartyMasks | None = None  # the last used set (its memory is reused)

    def run(self) -> None:
        """Serve commands until :class:`~smpc.messages.Close` or the coordinator leaves."""
        try:
            while True:
                try:
                    message = self.channel.recv()
                except (EOFError, OSError):
                    log.info("party %d: coordinator gone, exiting", self.rank)
                    return
                if isinstance(message, msg.Close):
                    log.info("party %d: closed by the coordinator", self.rank)
                    return
                try:
                    self._dispatch(message)
                except (EOFError, BrokenPipeError, ConnectionResetError):
                    return
                except Exception:
                    log.exception("party %d failed", self.rank)
                    self.channel.send(msg.Failure(rank=self.rank, error=traceback.format_exc()))
        finally:
            if self._buffer is not None:
                self._buffer.close()
                self._buffer = None

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, msg.Aggregate):
            self._aggregate(message)
        elif isinstance(message, msg.PrepareMasks):
            self._prepare(message)
        elif isinstance(message, msg.Query) and message.what == "counters":
            self.channel.send(msg.Counters(**self.counters))
        elif isinstance(message, msg.Query) and message.what == "received":
            self.channel.send(msg.Received(records=[r for r, _ in self.records]))
            for _, values in self.records:
                if values is not None:
                    self.channel.send_array(values)
            self.records = []
        elif isinstance(message, msg.Query) and message.what == "opened":
            self.channel.send(msg.Received(records=[r for r, _ in self.opened]))
            for _, values in self.opened:
                self.channel.send_array(values)
            self.opened = []
        else:
            raise ValueError(f"unexpected message {message!r}")

    # ------------------------------------------------------------------ one operation
    def _prepare(self, message: msg.PrepareMasks) -> None:
        """Receive the mask keys of a coming sum and expand them in the background."""
        if message.n_clients < 1 or message.size < 1:
            raise ValueError(f"nothing to prepare in {message!r}")
        keys: list[bytes] = []
        for client in range(message.n_clients):
            key_message = self.channel.recv()
            if not isinstance(key_message, msg.MaskKey) or key_message.client != client:
                raise ValueError(
                    f"expected the mask key of client {client} to prepare, got {key_message!r}"
                )
            key = bytes.fromhex(key_message.key)
            if len(key) != KEY_BYTES:
                raise FrameError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}")
            keys.append(key)
        # An unused earlier set is dropped (its keys never used); a used one lends its memory.
        self._prepared = PartyMasks(message.token, message.size, keys, self._spent)
        self._spent = None

    def _take_prepared(self, op: msg.Aggregate) -> PartyMasks:
        """The prepared set ``op`` names (used once), checked against ``op``."""
        prepared, self._prepared = self._prepared, None
        if prepared is None or op.prepared != prepared.token:
            raise ValueError(f"{op} names masks this party did not prepare")
        if op.kind != "sum" or (op.n_clients, op.size) != (prepared.n_clients, prepared.size):
            raise ValueError(
                f"masks prepared for a sum of {prepared.n_clients} x {prepared.size}, not for {op}"
            )
        return prepared

    def _use_prepared(self, op: msg.Aggregate, result: np.ndarray) -> None:
        """Write the sum of the masks prepared for ``op`` into ``result``; count each key."""
        prepared = self._take_prepared(op)
        np.copyto(result, prepared.total())
        self._spent = prepared
        for client, key in enumerate(prepared.keys):
            self._count(op, client, KEY_BYTES, key, None)

    def _count(
        self, op: msg.Aggregate, client: int, nbytes: int, key: bytes | None, share: Any
    ) -> None:
        """Count client ``client``'s share (and keep it, with ``record``)."""
        self.counters["messages"] += 1
        self.counters["bytes"] += nbytes
        if self.record:
            values = expand_key(key, op.size) if key is not None else np.array(share)
            self._record(op, client, values)

    def _map_buffer(self, path: str | None) -> SharedBuffer | None:
        if path is None:
            return None
        if self._buffer is None or self._buffer.path != path:
            if self._buffer is not None:
                self._buffer.close()
            self._buffer = SharedBuffer(path)
        return self._buffer

    def _next_share(
        self, op: msg.Aggregate, client: int, buffer: SharedBuffer | None
    ) -> tuple[bytes | None, np.ndarray | None, int]:
        """Receive client ``client``'s share: returns (key or None, array or None, bytes)."""
        message: Any = self.channel.recv()
        expected: dict[str, type] = {
            "key": msg.MaskKey,
            "array": msg.ShareArray,
            "buffer": msg.ShareInBuffer,
            "sealed": msg.SealedShare,
        }
        kind = expected.get(op.share_format)
        if (
            kind is None
            or not isinstance(message, kind)
            or getattr(message, "client", -1) != client
        ):
            raise ValueError(
                f"expected the {op.share_format} share of client {client}, got {message!r}"
            )
        if isinstance(message, msg.MaskKey):
            key = bytes.fromhex(message.key)
            if len(key) != KEY_BYTES:
                raise FrameError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}")
            return key, None, KEY_BYTES
        if isinstance(message, msg.SealedShare):
            return self._open_sealed(op, message)
        if isinstance(message, msg.ShareInBuffer):
            if buffer is None:
                raise ValueError("a share in the shared buffer, but no buffer was announced")
            return None, buffer.inputs(op.n_clients, op.size)[client], 8 * op.size
        row = self.channel.recv_array(into=np.empty(op.size, dtype=np.int64))
        return None, row, row.nbytes

    def _open_sealed(
        self, op: msg.Aggregate, message: msg.SealedShare
    ) -> tuple[bytes | None, np.ndarray | None, int]:
        """A deployed client's share, opened with the key this party shares with it."""
        from smpc import sealed

        payload_bytes = 8 * op.size if self.rank == 0 else KEY_BYTES
        if message.nbytes != sealed.sealed_size(payload_bytes):
            raise ValueError(f"a sealed share of {message.nbytes} bytes; expected another size")
        blob = self.channel.recv_array(into=np.empty(message.nbytes, dtype=np.uint8))
        key = sealed.client_key(self._secret(), message.name)
        payload = sealed.open_sealed(key, blob.tobytes(), message.context, message.name, self.rank)
        self._sealed_seen.append((message.name, message.context))
        if self.rank == 0:
            return None, np.frombuffer(payload, dtype=np.int64).copy(), message.nbytes
        return payload, None, message.nbytes

    def _secret(self) -> bytes:
        """The party's secret for deployed clients' keys (``$SMPC_CLIENT_SECRET``)."""
        from smpc import sealed

        if self._client_secret is None:
            secret = os.environ.get(sealed.SECRET_ENV, "")
            if not secret:
                raise ValueError(
                    f"sealed client shares need this party's secret in ${sealed.SECRET_ENV}."
                )
            self._client_secret = sealed.party_secret(bytes.fromhex(secret), self.rank)
        return self._client_secret

    def _check_sealed_operation(self, op: msg.Aggregate) -> None:
        """Check one sealed operation before anything is computed or revealed.

        One context for every share, passing the session's checks
        (:class:`~smpc.sealed.ContextPolicy`), and result slices going where that context
        says (:func:`smpc.sealed.check_owner_destinations`).
        """
        from smpc import sealed

        contexts = {c for _, c in self._sealed_seen}
        if len(contexts) != 1:
            raise sealed.SealError(
                "check 'one context': the shares of one operation were sealed for different "
                "operations (or with different weights or steps)."
            )
        names = [n for n, _ in self._sealed_seen]
        body = self._policy.check(contexts.pop(), names, op.kind)
        sealed.check_owner_destinations(body, names, op.destinations, op.size)

    def _owner_slice(self, op: msg.Aggregate, owner: int, lo: int, hi: int, values: Any) -> Any:
        """The party's result slice for client ``owner``, sealed for that client only."""
        from smpc import sealed

        payload = np.ascontiguousarray(values).tobytes()
        if op.share_format == "sealed":  # deployed: the key this party shares with the site
            name, context = self._sealed_seen[owner]
            key = sealed.client_key(self._secret(), name)
            blob = sealed.seal_result(key, payload, context, name, self.rank, lo, hi)
        else:
            if op.owner_keys is None or not 0 <= owner < len(op.owner_keys):
                raise ValueError(
                    f"no key of client {owner} to seal its result slice: owner-revealed "
                    "slices never leave a party in the clear."
                )
            key = bytes.fromhex(op.owner_keys[owner])
            blob = sealed.seal_result(key, payload, str(op.op_id), str(owner), self.rank, lo, hi)
        return np.frombuffer(blob, dtype=np.uint8)

    def _aggregate(self, op: msg.Aggregate) -> None:
        start = time.perf_counter()
        self._sealed_seen: list[tuple[str, str]] = []
        if op.kind not in ("sum", "argmax"):
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.destinations is not None:
            self._check_destinations(op)
        buffer = self._map_buffer(op.buffer_path)
        if buffer is not None and buffer.capacity < SharedBuffer.values_needed(
            op.n_clients if op.share_format == "buffer" else 0, op.size
        ):
            raise ValueError(f"shared buffer {buffer.path} is too small for {op}")
        # An owner-revealed result share never goes into the buffer the coordinator maps.
        in_buffer = buffer is not None and op.destinations is None
        result = buffer.result(op.size) if buffer is not None and in_buffer else None
        if result is None:
            result = np.empty(op.size, np.int64)
        rows = np.empty((op.n_clients, op.size), np.int64) if op.kind == "argmax" else None
        keys: list[bytes] = []  # a sum of keyed shares is expanded once all keys are in
        if op.share_format == "prepared":  # the shares are masks expanded ahead
            self._use_prepared(op, result)
        else:
            for client in range(op.n_clients):
                key, share, nbytes = self._next_share(op, client, buffer)
                if rows is None and key is not None:
                    keys.append(key)
                elif rows is not None:  # argmax keeps every share
                    target = rows[client]
                    if key is not None:
                        MaskStream(key).fill(target)
                    else:
                        target[...] = share
                elif share is None:
                    raise ValueError(f"no share received for client {client}")
                elif client == 0:
                    np.copyto(result, share)
                else:
                    np.add(result, share, out=result)
                self._count(op, client, nbytes, key, share)
        if op.share_format == "sealed":
            self._check_sealed_operation(op)  # before anything is computed or revealed
        if rows is not None and self.crypten is None:  # refused once every share is read
            raise RuntimeError("argmax needs CrypTen parties (processes), not in-process ones")
        if keys:
            sum_masks(keys, result)
        self.counters["operations"] += 1
        self.channel.send(msg.SharesReceived(op_id=op.op_id, rank=self.rank))
        traffic, rounds = 0, 0
        if rows is not None:
            share, traffic, rounds = self._argmax(rows, op.op_id)
            result[...] = share
        log.debug("party %d: %s of %d x %d done", self.rank, op.kind, op.n_clients, op.size)
        self.channel.send(
            msg.Result(
                op_id=op.op_id,
                rank=self.rank,
                bytes_between_parties=traffic,
                mpc_rounds=rounds,
                seconds=time.perf_counter() - start,
                in_buffer=in_buffer,
            )
        )
        if op.destinations is not None:
            # Owner-revealed: each slice to its recipient only; the rest to nobody.
            # A client's slice is sealed for it: the coordinator relays ciphertext only.
            for owner, lo, hi in op.destinations:
                self.channel.send(
                    msg.OwnerShare(op_id=op.op_id, rank=self.rank, owner=owner, start=lo, stop=hi)
                )
                part = result[lo:hi]
                if owner >= 0:
                    part = self._owner_slice(op, owner, lo, hi, part)
                self.channel.send_array(np.ascontiguousarray(part))
            return
        # Each party sends its share of the result to the coordinator only: no party ever
        # holds the aggregate in the clear (CrypTen's reveal() would give it to them).
        if not in_buffer:
            self.channel.send_array(result)

    @staticmethod
    def _check_destinations(op: msg.Aggregate) -> None:
        if op.kind != "sum":
            raise ValueError(f"destinations are for sums only, got kind {op.kind!r}")
        for item in op.destinations or []:
            if (
                len(item) != 3
                or not all(isinstance(v, int) for v in item)
                or item[0] < -1
                or not 0 <= item[1] < item[2] <= op.size
                or item[0] >= op.n_clients
            ):
                raise ValueError(f"bad destination {item!r} for a result of {op.size} values")

    def _argmax(self, shares: np.ndarray, op_id: int = 0) -> tuple[np.ndarray, int, int]:
        """Return this party's share of the per-column winning index (lowest index on ties).

        With ``record``, every value this party opens with the others meanwhile is kept
        (:func:`recording_openings`), for the coordinator's ``Query("opened")``.
        """
        crypten: Any = self.crypten
        if isinstance(crypten, LazyCrypten):
            crypten = crypten.get()
        opened: list[np.ndarray] | None = [] if self.record else None
        with recording_openings(crypten.comm.get(), opened):
            result = _secure_argmax(crypten, shares)
        for k, values in enumerate(opened or []):
            record = {"op": "argmax", "id": op_id, "opening": k, "size": int(values.size)}
            self.opened.append((record, values))
        return result

    def _record(self, op: msg.Aggregate, client: int, share: np.ndarray) -> None:
        keep = share.size <= RECORD_MAX_VALUES
        record = {
            "op": op.kind,
            "id": op.op_id,
            "client": client,
            "sha256": hashlib.sha256(share.tobytes()).hexdigest(),
            "with_values": keep,
        }
        self.records.append((record, share.copy() if keep else None))


def _secure_argmax(crypten: Any, shares: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A party's share of the argmax of its ``(clients, columns)`` shares; bytes, rounds."""
    import torch

    crypten.reset_communication_stats()
    n_clients = shares.shape[0]
    # Encoded values are integers in the ring: precision 0 keeps every product exact.
    values = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(shares), precision=0)
    # Ties go to the lowest client index: compare K*x + (K-1-i), public operations
    # on shares (local multiply, party 0 adds the constant), all keys distinct.
    offsets = torch.arange(n_clients - 1, -1, -1, dtype=torch.long).unsqueeze(1)
    keys = values * n_clients + offsets
    index = distinct_argmax(crypten, keys)
    stats = crypten.comm.get().get_communication_stats()
    share = np.ascontiguousarray(index._tensor.share.numpy(), dtype=np.int64)
    return share, int(stats["bytes"]), int(stats["rounds"])


#: CrypTen communicator methods through which a party receives values from the others.
_RECEIVING = ("all_reduce", "reduce", "gather", "all_gather", "broadcast", "recv", "scatter")


@contextlib.contextmanager
def recording_openings(communicator: Any, into: list[np.ndarray] | None) -> Iterator[None]:
    """Test seam: append to ``into`` every value ``communicator`` hands this party.

    Every value a CrypTen party learns from the other parties arrives through one of the
    communicator's collective or point-to-point calls (a ``reveal`` is an ``all_reduce``
    or ``reduce`` of the shares; Beaver's masked operands and the masked bit of
    ``B2A_single_bit`` too); party 0 also receives the trusted dealer's correlated
    randomness through it (a ``broadcast``: fresh random values). With
    ``into`` a list, each such result is copied (flat int64) in call order while the
    block runs; with ``None`` nothing changes. A secure protocol opens only values masked
    by fresh randomness: the same inputs open different values in two runs
    (tests/smpc/test_privacy_mutants.py checks it for ``argmax``).
    """
    if into is None:
        yield
        return

    def keep(value: Any) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            for item in value:
                keep(item)
            return
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        into.append(np.array(array, dtype=np.int64).ravel())

    def wrapped(call: Any) -> Any:
        def receive(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            keep(result)
            return result

        return receive

    patched = [name for name in _RECEIVING if hasattr(communicator, name)]
    for name in patched:  # instance attributes shadow the class's methods while recording
        setattr(communicator, name, wrapped(getattr(communicator, name)))
    try:
        yield
    finally:
        for name in patched:
            delattr(communicator, name)


def _less_than_zero(crypten: Any, values: Any) -> Any:
    """Secret-shared ``values < 0`` (0/1, precision 0) of an arithmetic ``MPCTensor``.

    CrypTen's own comparison converts the arithmetic shares to binary ones by adding the
    parties' shares with a 64-bit adder circuit per share after the first (two for three
    parties, ~7 rounds of AND gates each). Hand-written here with a carry-save step:
    three binary shares become two with one round of AND gates (``a ^ b ^ c`` and the
    shifted majority ``(a & b) ^ (c & (a ^ b))``, both ANDs in one batch), so one adder
    remains. The sign bit goes back to an arithmetic share as in CrypTen
    (``B2A_single_bit``: the bit is revealed only masked by a random bit from the dealer).
    """
    from crypten.mpc.primitives import BinarySharedTensor
    from crypten.mpc.primitives.beaver import B2A_single_bit

    share = values._tensor.share
    world = crypten.comm.get().get_world_size()
    # Party i's arithmetic share as an XOR-sharing (zero-sharing from seeds: no traffic).
    parts = [BinarySharedTensor(share, src=i) for i in range(world)]
    while len(parts) > 2:
        a, b, c = parts[-3:]
        del parts[-3:]
        a_xor_b = a ^ b
        ands = BinarySharedTensor.stack([a, c]) & BinarySharedTensor.stack([b, a_xor_b])
        first = BinarySharedTensor.from_shares(ands.share[0], precision=0)
        second = BinarySharedTensor.from_shares(ands.share[1], precision=0)
        parts += [a_xor_b ^ c, (first ^ second) << 1]
    total = parts[0] + parts[1] if len(parts) == 2 else parts[0]
    sign = (total >> 63) & 1  # the sign bit of the 64-bit ring element
    bit = B2A_single_bit(sign)
    return crypten.mpc.MPCTensor.from_shares(bit.share, precision=0)


def distinct_argmax(crypten: Any, keys: Any) -> Any:
    """Secret-shared per-column argmax of ``keys`` (rows x columns) whose keys are distinct.

    Hand-written instead of CrypTen's ``argmax(dim=0, one_hot=False)``: with distinct keys
    the winner is unique, so CrypTen's random tie-break (``weighted_index``: a cumulative
    sum, random numbers and a second comparison of the whole tensor) only doubled the
    communication rounds. Here one batched comparison covers the K(K-1)/2 pairs
    (``key_i > key_j`` for i < j; the reverse order is ``1 -`` it, a local operation);
    row i wins where it beats all K-1 others, the product of those K-1 bits
    (ceil(log2(K-1)) rounds of Beaver multiplications, all rows at once); the index is
    ``sum_i i * win_i`` (local). Everything stays secret-shared: the caller reveals
    only the index, as before.

    Parameters
    ----------
    crypten
        The initialised CrypTen module.
    keys
        ``MPCTensor`` of integer keys at precision 0, distinct within every column.

    Returns
    -------
    MPCTensor of the winning row per column (precision 0).
    """
    import torch

    n_rows = int(keys.size(0))
    if n_rows == 1:
        return keys[0] * 0
    first, second = torch.triu_indices(n_rows, n_rows, 1)
    beats = _less_than_zero(crypten, keys[second] - keys[first])  # key_first > key_second
    both = crypten.cat([beats, 1 - beats])  # then key_second > key_first
    pairs = int(first.numel())
    terms: list[list[int]] = [[] for _ in range(n_rows)]
    for p, (i, j) in enumerate(zip(first.tolist(), second.tolist(), strict=True)):
        terms[i].append(p)  # row i beats row j
        terms[j].append(pairs + p)  # row j beats row i
    order = torch.tensor([p for row in terms for p in row], dtype=torch.long)
    factors = both.index_select(0, order).view(n_rows, n_rows - 1, *keys.size()[1:])
    wins = factors.prod(1)  # one-hot over rows, per column
    weights = torch.arange(n_rows, dtype=torch.long).view(n_rows, *([1] * (keys.dim() - 1)))
    return (wins * weights).sum(0)


def serve_in_thread(rank: int, channel: Channel, record: bool = False) -> threading.Thread:
    """Run an additions-only party (no CrypTen) in a daemon thread of this process."""
    channel.send(
        msg.Ready(
            rank=rank,
            pid=os.getpid(),
            world_size=-1,
            provider="none",
            mode="threads",
            precision_bits=-1,
        )
    )
    thread = threading.Thread(
        target=PartyLoop(rank, channel, None, record).run,
        name=f"smpc-party-{rank}",
        daemon=True,
    )
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m smpc.party --rank R --world-size 3 --rendezvous ...``."""
    run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Serve the party that :func:`smpc.party_cli.build_parser`'s ``args`` describe.

    A bad setting exits with code 2 and one line naming the rank and the problem.
    """
    if args.listen is not None and args.listen[0] in ("0.0.0.0", "::", ""):
        print(
            f"smpc.party: warning: --listen {args.listen[0]} accepts the coordinator on every "
            "interface; prefer this host's address on the private network",
            file=sys.stderr,
        )
    try:
        serve(
            args.rank,
            args.world_size,
            args.rendezvous,
            listen=args.listen,
            provider=args.provider,
            mode=args.mode,
            seed=args.seed,
            precision_bits=args.precision_bits,
            startup_timeout=args.startup_timeout,
            gloo_interface=args.gloo_interface,
            agreed_clients=[c for c in args.sites.split(",") if c] if args.sites else None,
            identity=handshake.load_identity(args.identity) if args.identity else None,
            roster=handshake.load_roster(args.roster) if args.roster else None,
        )
    except (handshake.HandshakeError, ValueError) as err:
        rank = args.rank if args.rank is not None else os.environ.get("RANK", "?")
        print(f"smpc.party: error: rank {rank}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses in tests
    main(sys.argv[1:])
