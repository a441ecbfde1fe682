"""A party process's start-up: checks, rendezvous handshake, CrypTen, then its loop.

:func:`serve` runs one party (or the dealer) in a process: a local party started by
:mod:`smpc.party_pool`, or a remote one (``python -m smpc.party``, :mod:`smpc.party.cli`);
:func:`serve_in_thread` runs an additions-only party in a thread of this process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from typing import Any

from smpc import handshake, process_guard
from smpc import messages as msg
from smpc.channel import Channel, ConnectionChannel
from smpc.options import CryptenOptions, check_mode_provider
from smpc.party.join import JOIN_FAILED_EXIT_CODE, LazyCrypten
from smpc.party.loop import PartyLoop

__all__ = ["AUTHKEY_ENV", "serve", "serve_in_thread"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

#: Environment variable holding the shared key that authenticates the coordinator.
AUTHKEY_ENV = "SMPC_AUTHKEY"


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


#: The CrypTen options' defaults, a party's too (written once in :mod:`smpc.options`).
_DEFAULTS = CryptenOptions()


def serve(
    rank: int | None = None,
    world_size: int | None = None,
    rendezvous: str | None = None,
    *,
    conn: Connection | None = None,
    listen: tuple[str, int] | None = None,
    authkey: bytes | None = None,
    provider: str = _DEFAULTS.provider,
    mode: str = _DEFAULTS.mode,
    seed: int | None = None,
    precision_bits: int = _DEFAULTS.precision_bits,
    record_received: bool = False,
    startup_timeout: float = _DEFAULTS.startup_timeout,
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
    world_size = (
        int(os.environ.get("WORLD_SIZE", _DEFAULTS.parties))
        if world_size is None
        else int(world_size)
    )
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
