"""Sealed client shares: deployed clients share and seal; the coordinator only relays."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
from _helpers.processes import alive

from smpc import sealed
from smpc.party_pool import PartyError

SECRET = bytes(range(32))
NAMES = ["site_a", "site_b", "site_c"]


def _keys(name: str, parties: int = 3) -> list[bytes]:
    return [sealed.client_key(sealed.party_secret(SECRET, r), name) for r in range(parties)]


def test_seal_open_round_trip_and_binding():
    key = _keys("site_a")[0]
    blob = sealed.seal(key, b"payload", "ctx", "site_a", 0)
    assert sealed.open_sealed(key, blob, "ctx", "site_a", 0) == b"payload"
    assert b"payload" not in blob
    for args in [("ctx2", "site_a", 0), ("ctx", "site_b", 0), ("ctx", "site_a", 1)]:
        with pytest.raises(sealed.SealError):
            sealed.open_sealed(key, blob, *args)
    with pytest.raises(sealed.SealError):
        sealed.open_sealed(_keys("site_b")[0], blob, "ctx", "site_a", 0)


def test_context_checks():
    policy = sealed.ContextPolicy()
    ctx = sealed.make_context("1", NAMES, "s1")
    assert policy.check(ctx, list(NAMES))["op"] == "1"
    assert policy.by_phase == {"": frozenset(NAMES)}  # the first operation's sites, from now on
    with pytest.raises(sealed.SealError, match="already run"):
        policy.check(ctx, list(NAMES))
    lone = sealed.make_context("2", ["site_a"], "s2")
    with pytest.raises(sealed.SealError, match="at least two"):
        policy.check(lone, ["site_a"])
    with pytest.raises(sealed.SealError, match="lists clients"):
        policy.check(sealed.make_context("3", NAMES, "s3"), ["site_a", "site_b"])
    with pytest.raises(sealed.SealError, match="'step'"):
        policy.check(json.dumps({"op": "4", "clients": NAMES}), list(NAMES))


@pytest.fixture(scope="module")
def parties():
    with _parties() as agg:
        yield agg


@contextlib.contextmanager
def _parties():
    import smpc

    before = os.environ.get(sealed.SECRET_ENV)
    os.environ[sealed.SECRET_ENV] = SECRET.hex()
    # spawn: the parties read $SMPC_CLIENT_SECRET as set now (a fork server started
    # earlier in the session would hand them its own, older environment)
    agg = smpc.make_aggregator("crypten", warm=False, start_method="spawn")
    try:
        yield agg
    finally:
        agg.close()
        if before is None:
            os.environ.pop(sealed.SECRET_ENV, None)
        else:
            os.environ[sealed.SECRET_ENV] = before


def _sealed(values, op, names=NAMES, bits=24, weights=None, step=None):
    context = sealed.make_context(op, list(names), op if step is None else step)
    out = []
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        w = None if weights is None else weights[i]
        out.append(
            sealed.seal_shares(
                np.asarray(v, dtype=np.float64),
                _keys(name),
                client=name,
                context=context,
                precision_bits=bits,
                scale=1.0 if w is None else w,
                extra=w,
            )
        )
    return out, context


def test_sealed_sum_weighted_sum_and_argmax_equal_plaintext(parties):
    rng = np.random.default_rng(0)
    values = [rng.normal(size=50) for _ in NAMES]
    blobs, ctx = _sealed(values, "t-sum")
    total, stats = parties.aggregate_sealed("sum", blobs, NAMES, ctx, 50, 24)
    np.testing.assert_allclose(total, np.sum(values, axis=0), atol=1e-6)
    assert stats["bytes_to_party"][1] == 3 * sealed.sealed_size(32)  # keys only
    w = [10.0, 30.0, 60.0]
    blobs, ctx = _sealed(values, "t-wsum", weights=w)
    out, _ = parties.aggregate_sealed("sum", blobs, NAMES, ctx, 51, 24)
    want = sum(wi * v for wi, v in zip(w, values, strict=True)) / sum(w)
    np.testing.assert_allclose(out[:-1] / out[-1], want, atol=1e-6)
    counts = [np.array([5.0, 1.0, 7.0]), np.array([5.0, 9.0, 2.0]), np.array([3.0, 9.0, 7.0])]
    blobs, ctx = _sealed(counts, "t-argmax", bits=16)
    winners, _ = parties.aggregate_sealed("argmax", blobs, NAMES, ctx, 3, None)
    assert winners.tolist() == [0, 1, 0]  # ties go to the lowest index


def test_a_lone_share_is_refused():
    """A coordinator that drops site_b's share to 'aggregate' site_a alone is refused."""
    blobs, ctx = _sealed([np.ones(4), np.ones(4)], "t-lone", names=NAMES[:2])
    with _parties() as agg, pytest.raises(PartyError, match="lists clients"):
        agg.aggregate_sealed("sum", blobs[:1], NAMES[:1], ctx, 4, 24)


def test_a_replayed_operation_is_refused():
    blobs, ctx = _sealed([np.ones(4), 2 * np.ones(4)], "t-replay", names=NAMES[:2])
    with _parties() as agg:
        first, _ = agg.aggregate_sealed("sum", blobs, NAMES[:2], ctx, 4, 24)
        np.testing.assert_allclose(first, 3.0)
        with pytest.raises(PartyError, match="already run"):
            agg.aggregate_sealed("sum", blobs, NAMES[:2], ctx, 4, 24)


def test_sealed_operations_are_timed_and_an_interruption_stops_the_parties(monkeypatch):
    blobs, ctx = _sealed([np.ones(4), 2 * np.ones(4)], "t-timed", names=NAMES[:2])
    with _parties() as agg:
        agg.aggregate_sealed("sum", blobs, NAMES[:2], ctx, 4, 24)
        assert set(agg.last_timing) == {
            "share_send",
            "receive",
            "mpc_results",
            "reconstruct",
            "party_max",
        }
        assert all(v >= 0 for v in agg.last_timing.values())
        pids = agg.pids

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        # interrupted mid-protocol (not a party's fault): the parties' state is unknown
        monkeypatch.setattr(agg, "_collect", interrupted)
        blobs, ctx = _sealed([np.ones(4), np.ones(4)], "t-interrupted", names=NAMES[:2])
        with pytest.raises(KeyboardInterrupt):
            agg.aggregate_sealed("sum", blobs, NAMES[:2], ctx, 4, 24)
        assert agg._closed and agg._party_pool.closed
        assert not [pid for pid in pids if alive(pid)]
