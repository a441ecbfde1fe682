"""CrypTen backend: additive secret sharing among three computation parties.

The coordinator (this process) plays the clients' side of the protocol: for each client
it encodes the contribution in fixed point and splits it into three shares
(:mod:`smpc.sharing`), and sends share ``i`` of every client to party ``i`` only. The
parties (:mod:`smpc.party`, separate processes) add the shares, or run CrypTen's
comparison protocol for argmax with a trusted dealer, and each sends its share of the
result to the coordinator, which alone reconstructs the aggregate. See ``docs/smpc.md``
for the trust model.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection
from typing import Any

import numpy as np

from smpc import sharing
from smpc.aggregator import Aggregator
from smpc.ledger import Traffic

_OPS = {"sum": "sum", "weighted_mean": "sum", "argmax": "argmax"}


@contextlib.contextmanager
def _main_without_phantom_file():
    """Hide ``__main__.__file__`` while starting a party when it names no real file.

    Forkserver/spawn children re-run the parent's main script from ``__main__.__file__``;
    for code piped to ``python -`` that is ``"<stdin>"``, which cannot be re-run, and the
    party dies at start-up. Parties never need the user's main module (their target is
    :func:`smpc.party.serve`), so it is left out of the start-up data in that case.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class PartyError(RuntimeError):
    """A computation party died, failed or stopped answering; all parties were stopped."""


class CryptenAggregator(Aggregator):
    """Secure aggregation by three CrypTen parties (semi-honest, non-colluding, with a dealer).

    Parameters
    ----------
    parties
        Number of computation parties (3 by default; at least 2).
    mode
        ``"secure"`` (OS randomness, trusted dealer) or ``"debug"`` (seeded masks and seeded
        CrypTen randomness for bit-for-bit reproducibility; NOT private).
    seed
        Debug-mode seed; refused in secure mode.
    timeout
        Seconds one operation may take before the caller gets a :class:`PartyError`.
    provider
        CrypTen's source of correlated randomness: ``"TTP"`` (a trusted dealer process).
        ``"TFP"`` (party 0 generates everything) is allowed only in debug mode.
    precision_bits
        Fixed-point fractional bits of values compared by ``argmax`` (CrypTen's encoder).
    sum_precision_bits
        Fixed-point fractional bits for ``sum``/``weighted_mean``: additions never
        multiply shares, so they afford more precision (24 bits: per-value rounding
        <= 3e-8) while the ring bound still admits |w*x| up to ~2.7e10 for 5 clients.
    rendezvous
        ``torch.distributed`` init method for local parties (default: a fresh file in a
        private temporary directory).
    party_addresses
        ``[(host, port), ...]`` of parties already running elsewhere
        (``python -m smpc.party --listen HOST:PORT ...``); the coordinator then starts no
        process and authenticates with ``authkey`` (default ``$SMPC_AUTHKEY``).
    authkey
        Shared key for ``party_addresses``.
    start_method
        ``multiprocessing`` start method for local parties. ``"forkserver"`` (default)
        forks parties from a clean server process that pre-imported CrypTen: fast, and the
        parties do not inherit the coordinator's memory (which holds the clients' data).
    startup_timeout
        Seconds to wait for the parties to come up.
    record_received
        Instrumentation: each party keeps what it received from clients; read it with
        :meth:`received_by_parties`.
    mask_source
        ``"prng"`` (default): each mask is expanded with SHAKE-256 from its own 256-bit
        OS-random key, and parties 1.. receive the key instead of the mask (pseudo-random
        secret sharing). ``"urandom"``: masks drawn from the OS CSPRNG and sent in full
        (~3x the traffic).
    """

    name = "crypten"

    def __init__(
        self,
        parties: int = 3,
        mode: str = "secure",
        seed: int | None = None,
        timeout: float = 30.0,
        provider: str = "TTP",
        precision_bits: int = 16,
        rendezvous: str | None = None,
        *,
        sum_precision_bits: int = 24,
        party_addresses: Sequence[tuple[str, int]] | None = None,
        authkey: bytes | None = None,
        start_method: str = "forkserver",
        startup_timeout: float = 120.0,
        record_received: bool = False,
        mask_source: str = "prng",
    ) -> None:
        super().__init__()
        if mode not in ("secure", "debug"):
            raise ValueError(f"mode must be 'secure' or 'debug', got {mode!r}.")
        if provider not in ("TTP", "TFP"):
            raise ValueError(f"provider must be 'TTP' (trusted dealer) or 'TFP', got {provider!r}.")
        if mode == "secure" and provider == "TFP":
            raise ValueError(
                "provider='TFP' is refused in secure mode: party 0 would generate all the "
                "randomness and could recover the other parties' shares; use provider='TTP' "
                "(the default) or mode='debug'."
            )
        if mode == "secure" and seed is not None:
            raise ValueError(
                "a seed is refused in secure mode: seeded masks are predictable; use "
                "mode='debug' for reproducible (non-private) runs."
            )
        if int(parties) < 2:
            raise ValueError(f"parties must be >= 2 for secret sharing, got {parties}.")
        if not 0 <= int(precision_bits) <= 32:
            raise ValueError(f"precision_bits must be in 0..32, got {precision_bits}.")
        if not 0 <= int(sum_precision_bits) <= 40:
            raise ValueError(f"sum_precision_bits must be in 0..40, got {sum_precision_bits}.")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}.")
        self.parties = int(parties)
        self.mode = mode
        self.seed = (0 if seed is None else int(seed)) if mode == "debug" else None
        self.timeout = float(timeout)
        self.provider = provider
        self.precision_bits = int(precision_bits)
        self.sum_precision_bits = int(sum_precision_bits)
        self.record_received = bool(record_received)
        self._randomness = sharing.ShareRandomness(mode, self.seed, source=mask_source)
        self._conns: list[Connection] = []
        self._procs: list[Any] = []  # local party processes, then the dealer (if any)
        self._tmpdir: str | None = None
        self._op_id = 0
        self._remote = party_addresses is not None
        self._names: list[str] = []
        start = time.perf_counter()
        try:
            if party_addresses is not None:
                self._connect(party_addresses, authkey, startup_timeout)
            else:
                self._start_local(rendezvous, start_method, startup_timeout)
        except BaseException:
            self._kill_all()
            raise
        self.startup_seconds = time.perf_counter() - start
        atexit.register(self.close)

    # ----------------------------------------------------------------- properties
    @property
    def private(self) -> bool:
        return self.mode == "secure"

    @property
    def privacy_note(self) -> str:
        if self.mode == "debug":
            return "not private (debug mode: seeded masks)"
        return (
            f"private: {self.parties} semi-honest non-colluding CrypTen parties each see only "
            "uniformly random shares; comparisons use a trusted dealer; only the coordinator "
            "reconstructs the aggregates (no party sees them)"
        )

    @property
    def pids(self) -> list[int]:
        """Process ids of the local parties, then the dealer (empty for remote parties)."""
        return [p.pid for p in self._procs]

    # ----------------------------------------------------------------- start-up
    def _start_local(
        self, rendezvous: str | None, start_method: str, startup_timeout: float
    ) -> None:
        from smpc import party

        ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Import CrypTen once in the fork server, so each party is a ~50 ms fork.
            ctx.set_forkserver_preload(["smpc.party", "smpc.crypten_compat"])
        if rendezvous is None:
            self._tmpdir = tempfile.mkdtemp(prefix="smpc-crypten-")
            rendezvous = "file://" + os.path.join(self._tmpdir, "rendezvous")
        self.rendezvous = rendezvous
        options = {
            "provider": self.provider,
            "mode": self.mode,
            "seed": self.seed,
            "precision_bits": self.precision_bits,
        }
        for rank in range(self.parties):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=party.serve,
                args=(rank, self.parties, rendezvous),
                kwargs={"conn": child, "record_received": self.record_received, **options},
                name=f"crypten-party-{rank}",
                daemon=True,
            )
            with _main_without_phantom_file():
                proc.start()
            child.close()  # so the parent sees EOF when the party dies
            self._procs.append(proc)
            self._conns.append(parent)
            self._names.append(f"crypten party {rank} (pid {proc.pid})")
        if self.provider == "TTP":
            dealer = ctx.Process(
                target=party.serve,
                args=(self.parties, self.parties, rendezvous),
                kwargs=options,
                name="crypten-dealer",
                daemon=True,
            )
            with _main_without_phantom_file():
                dealer.start()
            self._procs.append(dealer)
        self._await_ready(startup_timeout)

    def _connect(
        self, addresses: Sequence[tuple[str, int]], authkey: bytes | None, startup_timeout: float
    ) -> None:
        from smpc.party import AUTHKEY_ENV

        addresses = [(str(h), int(p)) for h, p in addresses]
        if len(addresses) != self.parties:
            raise ValueError(
                f"party_addresses lists {len(addresses)} parties but parties={self.parties}."
            )
        key = authkey if authkey is not None else os.environ.get(AUTHKEY_ENV, "").encode()
        if not key:
            raise ValueError(
                f"remote parties need a shared authkey: pass authkey= or set {AUTHKEY_ENV} "
                "to the value the parties were started with."
            )
        self.rendezvous = None
        deadline = time.monotonic() + startup_timeout
        for rank, address in enumerate(addresses):
            self._names.append(f"crypten party {rank} at {address[0]}:{address[1]}")
            # Wait until the party listens (it does so once all parties joined the MPC):
            # multiprocessing's Client has no timeout of its own.
            while True:
                try:
                    socket.create_connection(address, timeout=1.0).close()
                    break
                except OSError as err:
                    if time.monotonic() > deadline:
                        raise PartyError(
                            f"{self._names[rank]} is not reachable after {startup_timeout:.0f} s "
                            f"({err}); start it with `python -m smpc.party --rank {rank} "
                            f"--world-size {self.parties} --rendezvous tcp://HOST:PORT --listen "
                            f"{address[0]}:{address[1]}` (and the dealer, rank {self.parties})."
                        ) from err
                    time.sleep(0.2)
            self._conns.append(Client(address, authkey=key))
        self._await_ready(startup_timeout)

    def _await_ready(self, startup_timeout: float) -> None:
        deadline = time.monotonic() + startup_timeout
        for rank in range(len(self._conns)):
            hello = self._receive(rank, "start-up", deadline)
            if not hello.get("ready") or hello.get("rank") != rank:
                raise PartyError(f"{self._names[rank]} answered {hello!r} instead of 'ready'.")
            expected = {
                "world_size": self.parties,
                "provider": self.provider,
                "mode": self.mode,
                "precision_bits": self.precision_bits,
            }
            mismatched = {k: hello.get(k) for k, v in expected.items() if hello.get(k) != v}
            if mismatched:
                raise PartyError(
                    f"{self._names[rank]} runs with {mismatched} but this aggregator expects "
                    f"{ {k: expected[k] for k in mismatched} }; start every party with the "
                    "same settings."
                )
            if self._remote:
                self._names[rank] += f" (pid {hello['pid']})"

    # ----------------------------------------------------------------- health & I/O
    def _dead_party(self) -> str | None:
        """Describe the first local process that exited, if any."""
        for i, proc in enumerate(self._procs):
            if proc.exitcode is not None:
                name = self._names[i] if i < self.parties else f"crypten dealer (pid {proc.pid})"
                return f"{name} exited with code {proc.exitcode}"
        return None

    def _fail(self, message: str) -> PartyError:
        self._kill_all()
        self._closed = True
        if message.endswith("during start-up") and not self._remote:
            message += (
                " (see the party's traceback above; a script that starts an aggregator at "
                "import time needs an `if __name__ == '__main__':` guard)"
            )
        return PartyError(message + "; all party processes were stopped: create a new aggregator.")

    def _check(self, op: str, deadline: float, waiting_for: Sequence[int]) -> None:
        dead = self._dead_party()
        if dead:
            raise self._fail(f"{dead} during {op}")
        if time.monotonic() > deadline:
            names = ", ".join(self._names[r] for r in waiting_for)
            raise self._fail(f"{names} did not answer within {self.timeout:g} s during {op}")

    def _receive(self, rank: int, op: str, deadline: float) -> dict[str, Any]:
        conn = self._conns[rank]
        while not conn.poll(0.02):
            self._check(op, deadline, [rank])
        try:
            message = conn.recv()
        except (EOFError, OSError) as err:
            time.sleep(0.05)  # let the exit code arrive, for a precise message
            dead = self._dead_party()
            raise self._fail(
                f"{dead or self._names[rank] + ' closed its connection'} during {op}"
            ) from err
        if isinstance(message, dict) and message.get("ok") is False:
            raise self._fail(f"{self._names[rank]} failed during {op}:\n{message.get('error')}")
        return message

    # ----------------------------------------------------------------- one round trip
    def _run(
        self, op: str, matrix: np.ndarray, precision: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Share each client's row, send share i to party i; return the reconstructed result.

        The result is the ring element (raw int64) the parties' result shares add up to.
        """
        self._check_open()
        n_clients, size = matrix.shape
        kind = _OPS[op]
        self._op_id += 1
        compressed = self.mode == "debug" or self._randomness.source == "prng"
        header = {
            "op": kind,
            "id": self._op_id,
            "n_clients": n_clients,
            "size": size,
            "compressed": compressed,
        }
        sent_bytes = [0] * self.parties
        deadline = time.monotonic() + self.timeout
        self._check(op, deadline, [])
        t0 = time.perf_counter()

        # One sender thread per party: a stopped party blocks only its own pipe, and the
        # three transfers overlap with generating the next client's shares.
        outboxes: list[queue.Queue] = [queue.Queue(maxsize=2) for _ in range(self.parties)]
        errors: list[BaseException | None] = [None] * self.parties

        def send(rank: int) -> None:
            conn = self._conns[rank]
            try:
                conn.send(header)
                for _ in range(n_clients):
                    conn.send_bytes(outboxes[rank].get())
            except BaseException as err:  # reported by the main thread
                errors[rank] = err

        threads = [
            threading.Thread(target=send, args=(r,), daemon=True, name=f"smpc-send-{r}")
            for r in range(self.parties)
        ]
        for t in threads:
            t.start()
        for client in range(n_clients):
            # Client-side work: encode, split; share i (or its mask key) goes to party i.
            encoded = sharing.encode(matrix[client], precision)
            shares = sharing.split_compressed(encoded, self.parties, self._randomness)
            del encoded
            for rank, share in enumerate(shares):
                sent_bytes[rank] += len(share) if isinstance(share, bytes) else share.nbytes
                while True:
                    if errors[rank] is not None:
                        self._raise_send_error(op, rank, errors[rank])
                    try:
                        outboxes[rank].put(share, timeout=0.02)
                        break
                    except queue.Full:
                        self._check(op, deadline, [rank])
            del shares
        # Every party acknowledges its shares before the MPC starts, so a party that
        # stops answering is named precisely rather than the ones waiting for it.
        for rank in range(self.parties):
            while threads[rank].is_alive():
                threads[rank].join(0.02)
                self._check(op, deadline, [rank])
            if errors[rank] is not None:
                self._raise_send_error(op, rank, errors[rank])
        t1 = time.perf_counter()
        for rank in range(self.parties):
            ack = self._receive(rank, op, deadline)
            if ack.get("ack") != self._op_id:
                raise self._fail(f"{self._names[rank]} sent {ack!r} instead of an ack during {op}")
        t2 = time.perf_counter()
        replies, result_shares = [], []
        for rank in range(self.parties):
            replies.append(self._receive(rank, op, deadline))
            try:
                result_shares.append(np.frombuffer(self._conns[rank].recv_bytes(), np.int64))
            except (EOFError, OSError) as err:
                raise self._fail(f"{self._names[rank]} closed its connection during {op}") from err
        t3 = time.perf_counter()
        #: Seconds per phase of the last operation (sharing + sending, waiting for the
        #: parties to receive, MPC + result shares back).
        self.last_timing = {"share_send": t1 - t0, "receive": t2 - t1, "mpc_reveal": t3 - t2}
        revealed = sharing.reconstruct(result_shares)
        stats = {
            "coordinator_bytes": int(sum(r.nbytes for r in result_shares)),
            "bytes_to_party": sent_bytes,
            "messages_to_party": [n_clients] * self.parties,
            "bytes_between_parties": [int(r["stats"]["bytes"]) for r in replies],
            "mpc_rounds": max(int(r["stats"]["rounds"]) for r in replies),
        }
        return revealed, stats

    def _raise_send_error(self, op: str, rank: int, err: BaseException) -> None:
        time.sleep(0.05)  # let the exit code arrive, for a precise message
        dead = self._dead_party()
        raise self._fail(
            f"{dead or self._names[rank] + f' refused the shares ({err!r})'} during {op}"
        ) from err

    def _label(self, column: int) -> str:
        spec = self._current_spec
        if spec is None:
            return f"value index {column}"
        offset = 0
        for leaf in spec.leaves:
            n = int(np.prod(leaf.shape))
            if column < offset + n:
                position = np.unravel_index(column - offset, leaf.shape) if leaf.shape else ()
                name = f"tensor {leaf.key!r}" if leaf.key is not None else "tensor"
                return f"{name} at {tuple(int(i) for i in position)}"
            offset += n
        return "the client's weight"

    # ----------------------------------------------------------------- backend hooks
    def _weighted_sum(
        self, matrix: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, float, Traffic]:
        # FedAvg is additions only: each client pre-multiplies by its weight locally and
        # shares [w*x, w]; the parties reveal sum w*x and sum w; division is in plaintext.
        weighted = np.empty((matrix.shape[0], matrix.shape[1] + 1), dtype=np.float64)
        np.multiply(matrix, weights[:, None], out=weighted[:, :-1])
        weighted[:, -1] = weights
        p = self.sum_precision_bits
        sharing.check_ring_bounds(weighted, p, what="w*x", label=self._label)
        raw, stats = self._run("weighted_mean", weighted, p)
        decoded = sharing.decode(raw, p)
        received = {"sum_weighted": [matrix.shape[1]], "sum_weights": []}
        return decoded[:-1], float(decoded[-1]), Traffic(coordinator_received=received, **stats)

    def _sum(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        p = self.sum_precision_bits
        sharing.check_ring_bounds(matrix, p, what="x", label=self._label)
        raw, stats = self._run("sum", matrix, p)
        traffic = Traffic(coordinator_received={"sum": [matrix.shape[1]]}, **stats)
        return sharing.decode(raw, p), traffic

    def _argmax(self, matrix: np.ndarray) -> tuple[np.ndarray, Traffic]:
        # Values are compared at the fixed-point resolution 2^-p (integer counts exactly);
        # parties form K*x + (K-1-i), hence the K-fold ring bound.
        sharing.check_ring_bounds(matrix, self.precision_bits, what="x", label=self._label)
        raw, stats = self._run("argmax", matrix, self.precision_bits)
        traffic = Traffic(coordinator_received={"argmax_index": [matrix.shape[1]]}, **stats)
        return raw.astype(np.int64), traffic

    # ----------------------------------------------------------------- instrumentation
    def _query(self, command: str) -> list[Any]:
        self._check_open()
        deadline = time.monotonic() + self.timeout
        for rank, conn in enumerate(self._conns):
            try:
                conn.send({"op": command})
            except OSError as err:
                self._raise_send_error(command, rank, err)
        return [self._receive(rank, command, deadline) for rank in range(self.parties)]

    def party_counters(self) -> list[dict[str, int]]:
        """Per party: operations, messages and bytes received from clients so far."""
        return self._query("counters")

    def received_by_parties(self) -> list[list[dict[str, Any]]]:
        """Per party, what it received from clients since the last call (then cleared).

        Needs ``record_received=True``. Each record: ``op``, ``id``, ``client``, ``sha256``
        of the share and ``values`` (the int64 share, for up to 2^20 values).
        """
        if not self.record_received:
            raise RuntimeError("create the aggregator with record_received=True to use this.")
        return self._query("received")

    # ----------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop the parties (gracefully, then by force) and release resources. Idempotent."""
        if getattr(self, "_shutdown_done", False):
            return
        self._shutdown_done = True
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send({"op": "close"})
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self._kill_all()

    def _kill_all(self) -> None:
        """Kill every local process still alive, reap all, close connections. Idempotent."""
        for proc in self._procs:
            if proc.exitcode is None:
                with contextlib.suppress(Exception):
                    proc.kill()
        for proc in self._procs:
            with contextlib.suppress(Exception):
                proc.join(5.0)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._shutdown_done = True
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
