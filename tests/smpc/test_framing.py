"""Pickle-free framing and the typed message schema shared by coordinator and parties."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest

from smpc import messages as msg
from smpc.channel import in_process_pair
from smpc.framing import (
    ARRAY_MAGIC,
    MESSAGE_MAGIC,
    FrameError,
    pack_array,
    pack_array_header,
    pack_message,
    unpack_array,
    unpack_array_header,
    unpack_message,
)

EXAMPLES = [
    msg.Ready(rank=1, pid=123, world_size=3, provider="TTP", mode="secure", precision_bits=16),
    msg.Aggregate(op_id=7, kind="sum", n_clients=5, size=10, share_format="key"),
    msg.Aggregate(7, "argmax", 5, 10, "buffer", buffer_path="/dev/shm/x/party0-1"),
    msg.Aggregate(8, "sum", 5, 10, "key", destinations=[[0, 0, 4], [-1, 9, 10]]),
    msg.Aggregate(9, "sum", 5, 10, "prepared", prepared="0123456789abcdef"),
    msg.PrepareMasks(token="0123456789abcdef", n_clients=5, size=10),
    msg.MaskKey(client=3, key="ab" * 32),
    msg.ShareArray(client=0),
    msg.ShareInBuffer(client=4),
    msg.SealedShare(client=1, name="site_a", context='{"op": "1"}', nbytes=60),
    msg.SharesReceived(op_id=7, rank=2),
    msg.Result(
        op_id=7, rank=2, bytes_between_parties=10, mpc_rounds=3, seconds=0.5, in_buffer=True
    ),
    msg.OwnerShare(op_id=8, rank=1, owner=0, start=0, stop=4),
    msg.Failure(rank=0, error="Traceback ..."),
    msg.Query(what="counters"),
    msg.Counters(operations=1, messages=5, bytes=160),
    msg.Received(
        records=[{"op": "sum", "id": 1, "client": 0, "sha256": "00", "with_values": True}]
    ),
    msg.Close(),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    frame = msg.encode(message)
    assert frame.startswith(MESSAGE_MAGIC)
    assert msg.decode(frame) == message


def test_every_message_type_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(msg.MESSAGE_CLASSES)


def _frame(fields: dict) -> bytes:
    return MESSAGE_MAGIC + json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"PICK" + b'{"type": "Close"}', "magic"),
        (MESSAGE_MAGIC + b"{not json", "not valid JSON"),
        (MESSAGE_MAGIC + b"[1, 2]", "object with a string 'type'"),
        (MESSAGE_MAGIC + b'{"rank": 1}', "object with a string 'type'"),
        (_frame({"type": "Exec", "code": "rm -rf /"}), "unknown message type"),
        (_frame({"type": "SharesReceived", "op_id": 1}), "needs fields"),
        (_frame({"type": "SharesReceived", "op_id": 1, "rank": 0, "x": 1}), "needs fields"),
        (_frame({"type": "SharesReceived", "op_id": "1", "rank": 0}), "is not"),
        (_frame({"type": "SharesReceived", "op_id": True, "rank": 0}), "is not"),
        (
            _frame(
                {
                    "type": "Aggregate",
                    "op_id": 1,
                    "kind": "sum",
                    "n_clients": 2,
                    "size": 3,
                    "share_format": "key",
                    "buffer_path": 5,
                }
            ),
            "is not",
        ),
    ],
)
def test_malformed_message_frames_are_refused(frame, match):
    with pytest.raises(FrameError, match=match):
        msg.decode(frame)


def test_only_protocol_messages_can_be_encoded():
    @dataclasses.dataclass
    class Close:  # same name, not the protocol's class
        pass

    with pytest.raises(TypeError):
        msg.encode(Close())
    with pytest.raises(FrameError):
        pack_message({"no": "type"})


@pytest.mark.parametrize(
    "array",
    [
        np.arange(-5, 5, dtype=np.int64),
        np.array([2**63 - 1, -(2**63)], dtype=np.int64),
        np.frombuffer(bytes(range(32)), dtype=np.uint8),
        np.linspace(-1, 1, 12).reshape(3, 4),
        np.zeros((0, 3), dtype=np.int64),
        np.array(5, dtype=np.int64),
    ],
)
def test_arrays_round_trip(array):
    back = unpack_array(pack_array(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert unpack_array_header(pack_array_header(array)) == (array.dtype, array.shape)


def test_malformed_array_frames_are_refused():
    good = pack_array(np.arange(4, dtype=np.int64))
    with pytest.raises(FrameError, match="announces"):
        unpack_array(good[:-1])  # one byte short
    with pytest.raises(FrameError, match="announces"):
        unpack_array(good + b"\0")  # one byte too many
    with pytest.raises(FrameError, match="magic"):
        unpack_array_header(b"SMM1" + bytes(10))
    with pytest.raises(FrameError, match="unknown dtype"):
        unpack_array_header(ARRAY_MAGIC + struct.pack("<BBQ", 99, 1, 4))
    with pytest.raises(FrameError, match="does not hold"):
        unpack_array_header(ARRAY_MAGIC + struct.pack("<BB", 1, 2) + struct.pack("<Q", 4))
    with pytest.raises(FrameError, match="exceeds"):
        unpack_array_header(ARRAY_MAGIC + struct.pack("<BB2Q", 1, 2, 2**40, 2**40))
    with pytest.raises(FrameError, match="cannot be framed"):
        pack_array_header(np.array(["a"], dtype=object))
    with pytest.raises(FrameError, match="truncated"):
        unpack_array(b"\x01")


def test_channel_refuses_arrays_that_do_not_match_their_header():
    # after a refused frame the channel is abandoned (the pool stops the party): one per case
    coordinator, party = in_process_pair()
    coordinator.send_array(np.arange(3, dtype=np.int64))
    with pytest.raises(FrameError, match="expected shape"):
        party.recv_array(into=np.empty(4, dtype=np.int64))
    coordinator, party = in_process_pair()
    coordinator.send_array(np.arange(3, dtype=np.float64))
    with pytest.raises(FrameError, match="expected a int64 array"):
        party.recv_array()
    coordinator, party = in_process_pair()
    # a header announcing 3 values followed by a shorter payload
    coordinator.send_frame(pack_array_header(np.arange(3, dtype=np.int64)))
    coordinator.send_frame(np.arange(2, dtype=np.int64))
    with pytest.raises(FrameError, match="holds 16 bytes"):
        party.recv_array()
    coordinator, party = in_process_pair()
    coordinator.send_array(np.arange(10, dtype=np.int64))
    with pytest.raises(FrameError, match="exceeds 5 values"):
        party.recv_array(max_values=5)
    coordinator.close()
    party.recv_frame()  # the payload left behind
    with pytest.raises(EOFError):
        party.recv()


def test_message_frames_are_plain_json():
    frame = msg.encode(msg.SharesReceived(op_id=3, rank=1))
    assert json.loads(frame[4:]) == {"type": "SharesReceived", "op_id": 3, "rank": 1}
    assert unpack_message(frame)["type"] == "SharesReceived"
