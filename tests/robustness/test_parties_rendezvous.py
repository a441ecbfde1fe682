"""The parties' rendezvous and the coordinator link under attack or misconfiguration:
a process without the key (rogue rank), a duplicate rank, a world-size or settings
mismatch, a wrong coordinator key. Every case is a clear error within the start-up
timeout; none hangs. Cases: CASES_PARTIES.md."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener

import numpy as np
import pytest
from _helpers.paths import ROOT, checkout_env
from _helpers.ports import free_ports
from _helpers.threads import in_thread

from smpc import handshake
from smpc.channel import ConnectionChannel
from smpc.handshake import HandshakeError, Hello
from smpc.messages import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(300)

KEY = b"the-shared-key"


def _hello(rank: int, world_size: int = 3, **changes) -> Hello:
    fields = dict(
        rank=rank, world_size=world_size, protocol=PROTOCOL_VERSION, provider="TTP", mode="secure"
    )
    return Hello(**{**fields, "precision_bits": 16, "pid": 1000 + rank, **changes})


# ------------------------------------------------------------------ handshake (no CrypTen)
def run_hub_briefly(*args) -> None:
    handshake.run_hub(*args, linger=1.0)


def test_rogue_rank_is_refused_and_takes_no_slot_the_right_ranks_still_join():
    (port,) = free_ports(1)
    address = ("127.0.0.1", port)
    hub, hub_out = in_thread(handshake.run_hub, address, KEY, _hello(0), 20.0)
    rogue, rogue_out = in_thread(handshake.join, address, b"wrong-key", _hello(1), 20.0)
    rogue.join(20)
    assert isinstance(rogue_out[0], HandshakeError)
    assert "refused this process: authentication failed: wrong key" in str(rogue_out[0])
    ranks = [in_thread(handshake.join, address, KEY, _hello(r), 20.0) for r in (1, 2, 3)]
    for thread, _ in ranks:
        thread.join(20)
    hub.join(20)
    assert hub_out == ["ok"] and [out for _, out in ranks] == [["ok"]] * 3


def test_duplicate_rank_is_refused_naming_it():
    (port,) = free_ports(1)
    address = ("127.0.0.1", port)
    hub, hub_out = in_thread(handshake.run_hub, address, KEY, _hello(0), 20.0)
    first, first_out = in_thread(handshake.join, address, KEY, _hello(1), 20.0)
    time.sleep(1.0)  # rank 1 holds its slot
    dup, dup_out = in_thread(handshake.join, address, KEY, _hello(1, pid=4242), 20.0)
    dup.join(20)
    assert isinstance(dup_out[0], HandshakeError)
    assert "refused this rank: duplicate rank 1: already held by the process at" in str(dup_out[0])
    others = [in_thread(handshake.join, address, KEY, _hello(r), 20.0) for r in (2, 3)]
    for thread, _ in [(first, first_out), *others]:
        thread.join(20)
    hub.join(20)
    assert hub_out == ["ok"] and first_out == ["ok"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"world_size": 4}, "runs with world_size 4 (rank 0 has 3)"),
        ({"precision_bits": 20}, "runs with precision_bits 20 (rank 0 has 16)"),
        ({"protocol": 1}, f"runs with protocol 1 (rank 0 has {PROTOCOL_VERSION})"),
    ],
)
def test_a_mismatch_aborts_every_rank_with_the_reason(change, expected):
    (port,) = free_ports(1)
    address = ("127.0.0.1", port)
    start = time.monotonic()
    hub, hub_out = in_thread(run_hub_briefly, address, KEY, _hello(0), 20.0)
    good, good_out = in_thread(handshake.join, address, KEY, _hello(1), 20.0)
    time.sleep(0.5)
    bad, bad_out = in_thread(handshake.join, address, KEY, _hello(2, **change), 20.0)
    for thread in (hub, good, bad):
        thread.join(20)
    assert time.monotonic() - start < 10
    for out in (hub_out, good_out, bad_out):
        assert isinstance(out[0], HandshakeError) and expected in str(out[0]), out


def test_a_missing_rank_fails_within_the_startup_timeout_naming_it():
    (port,) = free_ports(1)
    address = ("127.0.0.1", port)
    start = time.monotonic()
    hub, hub_out = in_thread(handshake.run_hub, address, KEY, _hello(0), 2.0)
    joined = [in_thread(handshake.join, address, KEY, _hello(r), 20.0) for r in (1, 2)]
    hub.join(10)
    for thread, _ in joined:
        thread.join(10)
    assert time.monotonic() - start < 6
    assert "the dealer (rank 3) did not join the rendezvous" in str(hub_out[0])
    assert "within the start-up timeout of 2 s" in str(hub_out[0])
    for _, out in joined:
        assert "aborted: the dealer (rank 3) did not join" in str(out[0])


def test_without_a_hub_a_rank_fails_within_the_startup_timeout():
    (port,) = free_ports(1)
    start = time.monotonic()
    with pytest.raises(HandshakeError, match=r"within the start-up timeout of 1\.5 s"):
        handshake.join(("127.0.0.1", port), KEY, _hello(1), 1.5)
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------ coordinator link
def _pair(party_key: bytes, coordinator_key: bytes) -> tuple[list, list]:
    listener = Listener(("127.0.0.1", 0))
    party_side: list = []

    def serve() -> None:
        conn = listener.accept()
        try:
            handshake.authenticate_party_side(conn, party_key, 5.0)
            party_side.append(conn)
        except AuthenticationError as err:
            party_side.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conn = Client(listener.address)
    coordinator_side: list = []
    try:
        handshake.authenticate_coordinator_side(conn, coordinator_key, 5.0)
        coordinator_side.append(conn)
    except AuthenticationError as err:
        coordinator_side.append(err)
    thread.join(10)
    listener.close()
    return party_side, coordinator_side


def test_coordinator_link_refuses_a_wrong_key_both_ways():
    party, coordinator = _pair(KEY, b"other")
    assert "does not hold the shared key" in str(party[0])
    assert "refused this coordinator's key" in str(coordinator[0])


def test_coordinator_link_carries_frames_only_never_pickle(monkeypatch):
    def no_pickle(*_):
        raise AssertionError("pickle on a network connection")

    monkeypatch.setattr(Connection, "send", no_pickle)
    monkeypatch.setattr(Connection, "recv", no_pickle)
    party, coordinator = _pair(KEY, KEY)
    a, b = ConnectionChannel(coordinator[0]), ConnectionChannel(party[0])
    from smpc import messages as msg

    a.send(msg.Close())
    assert isinstance(b.recv(), msg.Close)
    b.send_array(np.arange(5))
    np.testing.assert_array_equal(a.recv_array(), np.arange(5))
    a.close()
    b.close()


# ------------------------------------------------------------------ real party processes
def _party(rank: int, world_size: int, gloo: int, key: str, *extra: str) -> subprocess.Popen:
    # start-up timeout 60 s: four interpreters importing torch on a loaded 2-core host
    # take up to ~20 s before the handshake starts (a later --startup-timeout overrides)
    cmd = [sys.executable, "-m", "smpc.party", "--rank", str(rank)]
    cmd += ["--world-size", str(world_size), "--rendezvous", f"tcp://127.0.0.1:{gloo}"]
    cmd += ["--startup-timeout", "60", *extra]
    env = checkout_env(SMPC_AUTHKEY=key)
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen], seconds: float) -> list[tuple[int | None, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            out.append((None, err))
            continue
        out.append((p.returncode, err))
    return out


def test_party_processes_with_different_world_sizes_fail_clearly_none_hangs():
    gloo, *listen = free_ports(4)
    start = time.monotonic()
    on = {r: ["--listen", f"127.0.0.1:{listen[r]}"] for r in range(3)}
    procs = [_party(r, 3, gloo, "k", *on.get(r, [])) for r in (0, 1, 3)]
    procs.append(_party(2, 4, gloo, "k", *on[2]))
    results = _finish(procs, 120)
    # Every rank exits as soon as the last one joined (its imports take up to ~20 s on a
    # loaded 2-core host): well before start-up timeout + imports, and none hangs.
    assert time.monotonic() - start < 60
    assert [code for code, _ in results] == [2, 2, 2, 2], results
    reason = "runs with world_size 4 (rank 0 has 3)"
    for _, err in results:
        assert reason in err, err


def test_rogue_party_process_is_refused_and_the_right_parties_still_work():
    from smpc.crypten_backend import CryptenAggregator

    gloo, *listen = free_ports(4)
    on = {r: ["--listen", f"127.0.0.1:{listen[r]}"] for r in range(3)}
    procs = [_party(0, 3, gloo, "right", *on[0])]  # rank 0 hosts the rendezvous
    rogue = _party(1, 3, gloo, "wrong", *on[1])
    try:
        ((code, err),) = _finish([rogue], 90)
        assert code == 2 and "authentication failed: wrong key" in err, err
        # the rogue took no slot: the right ranks join after it and compute
        procs += [_party(r, 3, gloo, "right", *on.get(r, [])) for r in (1, 2, 3)]
        addresses = [("127.0.0.1", p) for p in listen]
        with CryptenAggregator(party_addresses=addresses, authkey=b"right", timeout=60) as agg:
            np.testing.assert_allclose(agg.sum([np.ones(4)] * 3), np.full(4, 3.0))
            np.testing.assert_array_equal(agg.argmax([np.array([1.0, 5.0])] * 3), [0, 0])
        assert [code for code, _ in _finish(procs, 30)] == [0, 0, 0, 0]
    finally:
        for p in [rogue, *procs]:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_coordinator_with_a_wrong_key_is_refused_by_remote_parties():
    from smpc.crypten_backend import CryptenAggregator, PartyError

    gloo, *listen = free_ports(4)
    procs = [
        _party(r, 3, gloo, "right", *([] if r == 3 else ["--listen", f"127.0.0.1:{listen[r]}"]))
        for r in range(4)
    ]
    try:
        addresses = [("127.0.0.1", p) for p in listen]
        with pytest.raises(PartyError, match=r"crypten party 0 at 127.0.0.1:\d+ did not authent"):
            CryptenAggregator(party_addresses=addresses, authkey=b"wrong", startup_timeout=60)
        # the parties are still waiting for the right coordinator
        with CryptenAggregator(party_addresses=addresses, authkey=b"right", timeout=60) as agg:
            np.testing.assert_allclose(agg.sum([np.ones(2)] * 3), np.full(2, 3.0))
        results = _finish(procs, 30)
        assert [code for code, _ in results] == [0, 0, 0, 0]
        assert "rejected a connection from" in results[0][1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_rank_that_vanishes_after_the_handshake_does_not_hang_the_others():
    gloo, *listen = free_ports(4)
    procs = [
        _party(r, 3, gloo, "k", "--startup-timeout", "8", "--listen", f"127.0.0.1:{listen[r]}")
        for r in range(3)
    ]
    # The "dealer" authenticates and passes the handshake, then never joins gloo.
    fake = _hello(3)
    dealer, dealer_out = in_thread(handshake.join, ("127.0.0.1", gloo), b"k", fake, 60.0)
    dealer.join(60)
    assert dealer_out == ["ok"]
    passed = time.monotonic()
    results = _finish(procs, 60)
    assert time.monotonic() - passed < 8 + 6  # slack for a loaded host
    for code, err in results:
        assert code == 3 and "the MPC did not form within the start-up timeout of 8 s" in err, err
