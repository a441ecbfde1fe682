"""Party lifecycle: start, connect, watch and reap computation parties (and the dealer).

A :class:`PartyPool` is one set of parties that serve one coordinator:

* :meth:`PartyPool.start_processes`: local party processes and the TTP dealer, forked
  from a fork server that pre-imported CrypTen; shares travel through per-party
  :class:`~smpc.shared_buffer.SharedBuffer` files (``transport="shm"``) or the pipes
  (``transport="pipe"``);
* :meth:`PartyPool.start_threads`: additions-only parties as threads over in-process
  channels (no CrypTen; for fast tests);
* :meth:`PartyPool.connect`: parties already running elsewhere (``python -m smpc.party``).

Every pool is reaped on :meth:`PartyPool.close`, on any error (:meth:`PartyPool.fail`)
and at interpreter exit.

**Background start.** ``start_processes(..., wait=False)`` (what
:class:`~smpc.crypten_backend.CryptenAggregator` does) returns at once and starts the fork
server, the processes and their ``Ready`` in a thread; :meth:`PartyPool.wait_started`
joins it within the start-up timeout and raises its error.

**Warm pools.** Starting parties costs ~0.1 s once the fork server runs (~2 s for the
first start in a process: the fork server imports torch and CrypTen). A process that runs
many federations (a sweep worker) can keep them warm: inside :func:`warm_parties` (or after
:func:`keep_warm`), a closed aggregator gives its pool back to :data:`_WARM`
(:func:`give_back`) and the next aggregator with the same settings borrows it
(:func:`borrow`) instead of starting new processes. A pool with a dead party is reaped and
replaced by a fresh one. Debug-mode pools are never reused (CrypTen's seeded randomness
would continue instead of restarting, breaking reproducibility).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from typing import Any

from smpc import handshake, process_guard
from smpc import messages as msg
from smpc.channel import Channel, ConnectionChannel, in_process_pair
from smpc.framing import FrameError
from smpc.options import CryptenOptions
from smpc.party.join import JOIN_FAILED_EXIT_CODE
from smpc.shared_buffer import SharedBuffer, private_directory, shm_root

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())  # quiet unless the application configures logging

#: Seconds a background start may overrun its start-up deadline before the caller gives
#: up on it (its own deadline names the silent party first; this catches a stuck fork server).
START_GRACE = 10.0


class PartyError(RuntimeError):
    """A computation party died, failed or stopped answering; all parties were stopped."""


#: The CrypTen options' defaults: the pool's, written once in :mod:`smpc.options`.
_DEFAULTS = CryptenOptions()


@dataclass(frozen=True)
class PoolSettings:
    """What a party pool was started with (a warm pool serves only equal settings).

    The defaults are :class:`~smpc.options.CryptenOptions`'s; :meth:`from_options` takes
    them from the options an aggregator was built with.
    """

    parties: int = _DEFAULTS.parties
    mode: str = _DEFAULTS.mode
    seed: int | None = _DEFAULTS.seed
    provider: str = _DEFAULTS.provider
    precision_bits: int = _DEFAULTS.precision_bits
    record_received: bool = _DEFAULTS.record_received
    transport: str = _DEFAULTS.transport
    start_method: str = _DEFAULTS.start_method

    @classmethod
    def from_options(cls, options: CryptenOptions) -> PoolSettings:
        """The parties' settings of an aggregator built from ``options``.

        Remote parties (``party_addresses``) talk over their connections: transport
        ``"pipe"``.
        """
        remote = options.party_addresses is not None
        return cls(
            parties=options.parties,
            mode=options.mode,
            seed=options.seed,
            provider=options.provider,
            precision_bits=options.precision_bits,
            record_received=options.record_received,
            transport="pipe" if remote else options.transport,
            start_method=options.start_method,
        )


@contextlib.contextmanager
def _main_without_phantom_file() -> Iterator[None]:
    """Hide ``__main__.__file__`` while starting a party when it names no real file.

    Forkserver/spawn children re-run the parent's main script from ``__main__.__file__``;
    for code piped to ``python -`` that is ``"<stdin>"``, which cannot be re-run, and the
    party dies at start-up. Parties never need the user's main module (their target is
    :func:`smpc.party.process.serve`), so it is left out of the start-up data in that case.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


#: What the parties' fork server imports once, so each party is a ~50 ms fork with torch
#: and CrypTen loaded; :mod:`smpc.crypten_preload` also keeps the coordinator's main
#: module out of the parties, and :mod:`smpc.forkserver_guard` (first) ends the server if
#: its parent dies during these imports.
FORKSERVER_PRELOAD = ["smpc.forkserver_guard", "smpc.party.process", "smpc.crypten_preload"]


def start_fork_server() -> None:
    """Start the parties' fork server now; it imports in the background (idempotent).

    Its imports (torch and CrypTen, ~2 CPU-s) then overlap the caller's own set-up; a
    later :meth:`PartyPool.start_processes` forks the parties from it.
    """
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    with _main_without_phantom_file():
        multiprocessing.forkserver.ensure_running()


class PartyPool:
    """One set of computation parties (and the dealer) serving one coordinator at a time.

    Build with :meth:`start_processes`, :meth:`start_threads` or :meth:`connect`.
    """

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.channels: list[Channel] = []
        self.names: list[str] = []
        self.procs: list[Any] = []  # local party processes, then the dealer (if any)
        self.threads: list[threading.Thread] = []
        self.remote = False
        self.rendezvous: str | None = None
        # Set here, not when the processes have started: the coordinator may fill a
        # party's buffer while the parties are still starting.
        self.buffers: list[SharedBuffer | None] = [None] * settings.parties
        self._buffer_lock = threading.Lock()
        self._tmpdir: str | None = None
        self._shm_dir: str | None = None
        self._buffer_serial = 0
        self.closed = False
        self.startup_seconds = 0.0
        self._lock = threading.Lock()
        self._starting: threading.Event | None = None  # set once a process start ended
        self._start_error: BaseException | None = None
        self._start_deadline = 0.0
        self._stopping = False
        atexit.register(self.kill)

    # ------------------------------------------------------------------ start-up
    @classmethod
    def start_processes(
        cls,
        settings: PoolSettings,
        rendezvous: str | None = None,
        startup_timeout: float = _DEFAULTS.startup_timeout,
        *,
        wait: bool = True,
    ) -> PartyPool:
        """Start local party processes (and the TTP dealer).

        With ``wait=False`` (forkserver only; other start methods wait) the processes
        start in a background thread and this returns at once (the rendezvous is set);
        :meth:`wait_started` joins it. Either way the whole start-up (fork server
        included) must end within ``startup_timeout``.
        """
        pool = cls(settings)
        pool._start_deadline = time.monotonic() + startup_timeout
        try:
            # Folders of coordinators that were SIGKILLed with all their parties.
            process_guard.remove_stale_directories([None, shm_root()])
            if rendezvous is None:
                # file:// in a private 0700 folder: no other user can join the MPC.
                pool._tmpdir = process_guard.owned_directory("smpc-crypten-")
                rendezvous = "file://" + os.path.join(pool._tmpdir, "rendezvous")
            pool.rendezvous = rendezvous
            if settings.transport == "shm":
                pool._shm_dir = private_directory()
        except BaseException:
            pool.kill()
            raise
        pool._starting = threading.Event()
        # Only forkserver children may be started from a thread that then ends: a spawn or
        # fork child's parent is that thread, and PR_SET_PDEATHSIG (process_guard) fires
        # when the parent *thread* exits, killing the party right after start-up.
        if wait or settings.start_method != "forkserver":
            pool._launch(startup_timeout)
            pool.wait_started()
            return pool
        thread = threading.Thread(
            target=pool._launch, args=(startup_timeout,), name="smpc-party-start", daemon=True
        )
        thread.start()
        return pool

    def _launch(self, startup_timeout: float) -> None:
        """Start the processes and await Ready; errors are kept for :meth:`wait_started`."""
        from smpc.party import process as party

        settings = self.settings
        start = time.perf_counter()
        assert self._starting is not None and self.rendezvous is not None
        try:
            ctx: Any = multiprocessing.get_context(settings.start_method)
            if settings.start_method == "forkserver":
                ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
            parent = multiprocessing.parent_process()
            options = {
                "provider": settings.provider,
                "mode": settings.mode,
                "seed": settings.seed,
                "precision_bits": settings.precision_bits,
                "startup_timeout": startup_timeout,
                # A tcp:// rendezvous runs the authenticated handshake with a fresh key.
                "authkey": secrets.token_bytes(32),
                # Parties die with this process (and with the process that started it,
                # when it is a multiprocessing worker: sweep workers), removing its folders.
                "parent_pids": [os.getpid()] + ([parent.pid] if parent and parent.pid else []),
                "cleanup": [p for p in (self._tmpdir, self._shm_dir) if p],
            }
            for rank in range(settings.parties + (settings.provider == "TTP")):
                dealer = rank == settings.parties
                kwargs = dict(options)
                pipe = None if dealer else ctx.Pipe(duplex=True)
                if pipe is not None:
                    kwargs.update(conn=pipe[1], record_received=settings.record_received)
                proc = ctx.Process(
                    target=party.serve,
                    args=(rank, settings.parties, self.rendezvous),
                    kwargs=kwargs,
                    name="crypten-dealer" if dealer else f"crypten-party-{rank}",
                    daemon=True,
                )
                with _main_without_phantom_file():
                    proc.start()
                with self._lock:
                    self.procs.append(proc)
                    if pipe is not None:
                        pipe[1].close()  # so the parent sees EOF when the party dies
                        self.channels.append(ConnectionChannel(pipe[0]))
                        self.names.append(f"crypten party {rank} (pid {proc.pid})")
                    if self._stopping:  # killed (closed, timed out) while starting
                        raise PartyError("the parties were stopped during start-up")
            self.await_ready(startup_timeout, self._start_deadline)
        except BaseException as err:
            self._start_error = err
            self.kill()
        else:
            self.startup_seconds = time.perf_counter() - start
            log.info("started %s in %.2f s", ", ".join(self.names), self.startup_seconds)
        finally:
            self._starting.set()

    def wait_started(self) -> float:
        """Wait for a background start (bounded by the start-up timeout); return seconds waited.

        Raises the start-up's error (a :class:`PartyError` naming the party, or the
        error that stopped the start); a start that overruns its deadline (a stuck fork
        server) by :data:`START_GRACE` seconds stops everything and raises
        :class:`PartyError`.
        """
        started = self._starting
        if started is None or (started.is_set() and self._start_error is None):
            return 0.0
        begin = time.perf_counter()
        if not started.wait(max(0.0, self._start_deadline - time.monotonic()) + START_GRACE):
            raise self.fail(
                f"{', '.join(self.names) or 'the crypten parties'} did not start within the "
                f"start-up timeout (the fork server is stuck?) during start-up"
            )
        if self._start_error is not None:
            raise self._start_error
        return time.perf_counter() - begin

    @classmethod
    def start_threads(cls, settings: PoolSettings) -> PartyPool:
        """Additions-only parties as threads of this process over in-process channels."""
        from smpc.party.process import serve_in_thread

        pool = cls(settings)
        for rank in range(settings.parties):
            mine, theirs = in_process_pair()
            pool.threads.append(serve_in_thread(rank, theirs, settings.record_received))
            pool.channels.append(mine)
            pool.names.append(f"in-process party {rank}")
        pool.buffers = [None] * settings.parties
        pool.await_ready(10.0)
        return pool

    @classmethod
    def connect(
        cls,
        settings: PoolSettings,
        addresses: Sequence[tuple[str, int]],
        authkey: bytes,
        startup_timeout: float = _DEFAULTS.startup_timeout,
    ) -> PartyPool:
        """Connect to parties already running elsewhere and check their settings."""
        pool = cls(settings)
        pool.remote = True
        start = time.perf_counter()
        try:
            deadline = time.monotonic() + startup_timeout
            for rank, address in enumerate(addresses):
                pool.names.append(f"crypten party {rank} at {address[0]}:{address[1]}")
                # Wait until the party listens (it does so once all parties joined the
                # MPC): multiprocessing's Client has no timeout of its own.
                while True:
                    try:
                        socket.create_connection(address, timeout=1.0).close()
                        break
                    except OSError as err:
                        if time.monotonic() > deadline:
                            raise PartyError(
                                f"{pool.names[rank]} is not reachable within the start-up "
                                f"timeout of {startup_timeout:g} s ({err}); start it with `python -m "
                                f"smpc.party --rank {rank} --world-size {settings.parties} "
                                "--rendezvous tcp://HOST:PORT --listen "
                                f"{address[0]}:{address[1]}` (and the dealer, rank "
                                f"{settings.parties})."
                            ) from err
                        time.sleep(0.2)
                conn = Client(address)  # authenticated below, not by multiprocessing
                pool.channels.append(ConnectionChannel(conn))
                try:
                    handshake.authenticate_coordinator_side(
                        conn, authkey, max(1.0, deadline - time.monotonic())
                    )
                except (AuthenticationError, EOFError, OSError) as err:
                    raise PartyError(
                        f"{pool.names[rank]} did not authenticate ({err}); use the same "
                        "SMPC_AUTHKEY on the coordinator and every party"
                    ) from err
            pool.buffers = [None] * settings.parties
            pool.await_ready(startup_timeout)
        except BaseException:
            pool.kill()
            raise
        pool.startup_seconds = time.perf_counter() - start
        log.info("connected to %s in %.2f s", ", ".join(pool.names), pool.startup_seconds)
        return pool

    def await_ready(self, startup_timeout: float, deadline: float | None = None) -> None:
        """Receive every party's :class:`~smpc.messages.Ready` and check its settings.

        ``deadline`` (``time.monotonic()``) defaults to ``startup_timeout`` from now.
        """
        if deadline is None:
            deadline = time.monotonic() + startup_timeout
        s = self.settings
        for rank in range(len(self.channels)):
            hello = self.receive(rank, "start-up", deadline, startup_timeout)
            if not isinstance(hello, msg.Ready) or hello.rank != rank:
                raise self.fail(f"{self.names[rank]} answered {hello!r} instead of Ready")
            if s.transport == "threads":
                continue
            expected = {
                "world_size": s.parties,
                "provider": s.provider,
                "mode": s.mode,
                "precision_bits": s.precision_bits,
                "protocol": msg.PROTOCOL_VERSION,
            }
            mismatched = {
                k: getattr(hello, k) for k, v in expected.items() if getattr(hello, k) != v
            }
            if mismatched:
                raise self.fail(
                    f"{self.names[rank]} runs with {mismatched} but this aggregator expects "
                    f"{ {k: expected[k] for k in mismatched} }; start every party with the "
                    "same settings (--mode, --provider, --precision-bits)"
                )
            if self.remote:
                self.names[rank] += f" (pid {hello.pid})"

    # ------------------------------------------------------------------ health
    @property
    def pids(self) -> list[int]:
        """Process ids of the local parties, then the dealer (empty for others)."""
        return [p.pid for p in self.procs]

    def dead_party(self) -> str | None:
        """Describe the local party (process or thread) that exited, if any.

        A rank that exited because it could not join the MPC
        (:data:`~smpc.party.join.JOIN_FAILED_EXIT_CODE`) is named only when no other rank
        died: another rank's death is usually what made it fail.
        """
        with self._lock:
            procs = list(self.procs)
        dead = [(i, p) for i, p in enumerate(procs) if p.exitcode is not None]
        dead.sort(key=lambda item: item[1].exitcode == JOIN_FAILED_EXIT_CODE)  # stable
        for i, proc in dead:
            name = self.names[i] if i < len(self.names) else f"crypten dealer (pid {proc.pid})"
            return f"{name} exited with code {proc.exitcode}"
        for i, thread in enumerate(self.threads):
            if not thread.is_alive():
                return f"{self.names[i]} stopped"
        return None

    @property
    def healthy(self) -> bool:
        """Open, started (if started in the background) and no party known to be dead."""
        started = self._starting is None or self._starting.is_set()
        return (
            started and self._start_error is None and not self.closed and self.dead_party() is None
        )

    def fail(self, message: str) -> PartyError:
        """Reap everything; return the :class:`PartyError` to raise."""
        self.kill()
        if message.endswith("during start-up") and not self.remote:
            message += " (see the party's traceback above"
            if self.settings.start_method == "spawn":  # forkserver parties skip __main__
                message += (
                    "; a script that starts an aggregator at import time needs an "
                    "`if __name__ == '__main__':` guard"
                )
            message += ")"
        log.error("%s", message)
        return PartyError(message + "; all party processes were stopped: create a new aggregator.")

    def check(self, op: str, deadline: float, waiting_for: Sequence[int], timeout: float) -> None:
        """Raise :class:`PartyError` if a party died or the deadline passed."""
        dead = self.dead_party()
        if dead:
            raise self.fail(f"{dead} during {op}")
        if time.monotonic() > deadline:
            names = ", ".join(self.names[r] for r in waiting_for)
            raise self.fail(f"{names} did not answer within {timeout:g} s during {op}")

    def receive(self, rank: int, op: str, deadline: float, timeout: float) -> Any:
        """Next message from party ``rank``; a :class:`~smpc.messages.Failure` raises."""
        channel = self.channels[rank]
        try:
            while not channel.poll(0.02):
                self.check(op, deadline, [rank], timeout)
            message = channel.recv()
        except (EOFError, OSError) as err:
            raise self.lost(rank, op, err) from err
        except FrameError as err:
            raise self.fail(
                f"{self.names[rank]} sent a malformed frame during {op} ({err})"
            ) from err
        if isinstance(message, msg.Failure):
            raise self.fail(f"{self.names[rank]} failed during {op}:\n{message.error}")
        return message

    def lost(self, rank: int, op: str, err: BaseException) -> PartyError:
        """The error for a connection to party ``rank`` that broke."""
        time.sleep(0.05)  # let the exit code arrive, for a precise message
        dead = self.dead_party()
        return self.fail(
            f"{dead or self.names[rank] + f' closed its connection ({err!r})'} during {op}"
        )

    # ------------------------------------------------------------------ shared memory
    def buffer(self, rank: int, n_values: int, populate: bool = False) -> SharedBuffer | None:
        """Party ``rank``'s shared buffer with at least ``n_values`` (None without shm).

        A buffer is kept across operations and replaced only by a larger one;
        ``populate`` allocates a new buffer's pages at once (see :class:`SharedBuffer`).
        """
        if self._shm_dir is None:
            return None
        with self._buffer_lock:
            current = self.buffers[rank]
            if current is not None and current.capacity >= n_values:
                return current
            if current is not None:
                current.close(unlink=True)
            self._buffer_serial += 1
            path = os.path.join(self._shm_dir, f"party{rank}-{self._buffer_serial}")
            buffer = SharedBuffer(path, n_values, create=True, populate=populate)
            self.buffers[rank] = buffer
            return buffer

    @property
    def starting(self) -> bool:
        """Whether a background start is still under way."""
        return self._starting is not None and not self._starting.is_set()

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Ask the parties to exit, wait briefly, then reap by force. Idempotent."""
        if self._starting is not None and not self._starting.is_set():
            with contextlib.suppress(Exception):
                self.wait_started()  # bounded; a failed start has stopped everything
        if self.closed:
            return
        for channel in self.channels:
            with contextlib.suppress(Exception):
                channel.send(msg.Close())
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        """Kill every local process still alive, reap all, release resources. Idempotent.

        A background start still running stops too: it kills what it starts afterwards.
        """
        with self._lock:
            self._stopping = True
            procs, channels = list(self.procs), list(self.channels)
        for proc in procs:
            if proc.exitcode is None:
                with contextlib.suppress(Exception):
                    proc.kill()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.join(5.0)
        for channel in channels:
            with contextlib.suppress(Exception):
                channel.close()
        for buffer in self.buffers:
            if buffer is not None:
                buffer.close(unlink=True)
        self.buffers = [None] * len(self.buffers)
        for path in (self._tmpdir, self._shm_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self._tmpdir = self._shm_dir = None
        if not self.closed:
            log.info("stopped %s", ", ".join(self.names) or "parties")
        self.closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.kill)


# ---------------------------------------------------------------------- warm pools
_WARM: dict[PoolSettings, list[PartyPool]] = {}
_warm_lock = threading.Lock()
_keep_warm = False


def keep_warm(enabled: bool = True) -> None:
    """Make closed aggregators of this process keep their parties for the next one.

    Pools are still reaped at interpreter exit (and on any error).
    """
    global _keep_warm
    _keep_warm = bool(enabled)
    if not enabled:
        close_warm_pools()


def keeping_warm() -> bool:
    """Whether :func:`keep_warm` is on in this process."""
    return _keep_warm


@contextlib.contextmanager
def warm_parties() -> Iterator[None]:
    """Keep parties warm inside the block; reap every warm pool when it ends."""
    previous = _keep_warm
    keep_warm(True)
    try:
        yield
    finally:
        keep_warm(previous)
        close_warm_pools()


def borrow(settings: PoolSettings) -> PartyPool | None:
    """A healthy warm pool with these settings, or None; dead ones are reaped."""
    with _warm_lock:
        pools = _WARM.get(settings, [])
        while pools:
            pool = pools.pop()
            if pool.healthy:
                log.info("reusing warm parties %s", ", ".join(pool.names))
                return pool
            log.warning("a warm party died (%s); starting fresh parties", pool.dead_party())
            pool.kill()
    return None


def give_back(pool: PartyPool) -> bool:
    """Keep ``pool`` warm if warm pools are on and it is healthy; else close it.

    Returns True when the pool was kept.
    """
    if _keep_warm and pool.settings.mode == "secure" and pool.healthy and not pool.remote:
        with _warm_lock:
            _WARM.setdefault(pool.settings, []).append(pool)
        return True
    pool.close()
    return False


def close_warm_pools() -> None:
    """Stop every warm pool of this process."""
    with _warm_lock:
        pools = [p for group in _WARM.values() for p in group]
        _WARM.clear()
    for pool in pools:
        pool.close()


atexit.register(close_warm_pools)
