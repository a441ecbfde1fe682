"""Bytes on the wire between the coordinator and a party: no pickle, ever.

Two kinds of frames, each one ``send_bytes`` message of the underlying connection:

* **message frame**: ``b"SMM1"`` + UTF-8 JSON object with a ``"type"`` key (the schema
  lives in :mod:`smpc.messages`); at most :data:`MAX_MESSAGE_BYTES`.
* **array header**: ``b"SMA1"`` + dtype code (1 byte) + ndim (1 byte) + ndim little-endian
  uint64 dimensions. The raw little-endian bytes of the array follow as the next frame
  (so a receiver can read them straight into its own buffer, and a sender can send them
  without copying). :func:`pack_array` / :func:`unpack_array` join both for tests.

A malformed frame (wrong magic, bad JSON, unknown dtype, sizes that do not add up) raises
:class:`FrameError`; nothing received is ever unpickled or evaluated.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MESSAGE_MAGIC = b"SMM1"
ARRAY_MAGIC = b"SMA1"
#: Largest message frame accepted (JSON control messages are small).
MAX_MESSAGE_BYTES = 1 << 20
#: Largest array accepted (16 GiB).
MAX_ARRAY_BYTES = 1 << 34
#: Most dimensions an array may have.
MAX_NDIM = 8
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<i8"),
    2: np.dtype("<u1"),
    3: np.dtype("<f8"),
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}


class FrameError(ValueError):
    """A frame received from the other end is malformed."""


def pack_message(fields: dict[str, Any]) -> bytes:
    """Frame a JSON-able dict that has a string ``"type"``."""
    if not isinstance(fields.get("type"), str):
        raise FrameError(f"a message needs a string 'type', got {fields!r}.")
    body = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise FrameError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}.")
    return MESSAGE_MAGIC + body


def unpack_message(frame: bytes | memoryview) -> dict[str, Any]:
    """Parse a message frame into its dict; raises :class:`FrameError` if malformed."""
    frame = bytes(frame)
    if frame[:4] != MESSAGE_MAGIC:
        raise FrameError(f"expected a message frame, got magic {frame[:4]!r}.")
    if len(frame) - 4 > MAX_MESSAGE_BYTES:
        raise FrameError(f"message of {len(frame) - 4} bytes exceeds {MAX_MESSAGE_BYTES}.")
    try:
        fields = json.loads(frame[4:].decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise FrameError(f"message frame is not valid JSON: {err}") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("type"), str):
        raise FrameError("message frame is not an object with a string 'type'.")
    return fields


def pack_array_header(array: np.ndarray) -> bytes:
    """Header frame describing ``array`` (dtype and shape)."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _CODE_OF.get(np.dtype(dtype))
    if code is None:
        raise FrameError(f"dtype {array.dtype} cannot be framed; use one of {list(_CODE_OF)}.")
    if array.ndim > MAX_NDIM:
        raise FrameError(f"arrays have at most {MAX_NDIM} dimensions, got {array.ndim}.")
    return ARRAY_MAGIC + struct.pack(f"<BB{array.ndim}Q", code, array.ndim, *array.shape)


def unpack_array_header(frame: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...]]:
    """Parse an array header frame into ``(dtype, shape)``; validates sizes."""
    frame = bytes(frame)
    if frame[:4] != ARRAY_MAGIC:
        raise FrameError(f"expected an array header, got magic {frame[:4]!r}.")
    if len(frame) < 6:
        raise FrameError("array header is truncated.")
    code, ndim = struct.unpack_from("<BB", frame, 4)
    if code not in DTYPE_CODES:
        raise FrameError(f"unknown dtype code {code} in array header.")
    if ndim > MAX_NDIM or len(frame) != 6 + 8 * ndim:
        raise FrameError(f"array header of {len(frame)} bytes does not hold {ndim} dimensions.")
    shape = struct.unpack_from(f"<{ndim}Q", frame, 6)
    dtype = DTYPE_CODES[code]
    nbytes = dtype.itemsize
    for dim in shape:
        nbytes *= dim
    if nbytes > MAX_ARRAY_BYTES:
        raise FrameError(f"array of {nbytes} bytes exceeds {MAX_ARRAY_BYTES}.")
    return dtype, tuple(int(d) for d in shape)


def payload_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Bytes of the raw frame that follows a header."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def pack_array(array: np.ndarray) -> bytes:
    """Header and raw bytes in one buffer: ``len(header)`` (2 bytes) + header + data."""
    header = pack_array_header(array)
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return struct.pack("<H", len(header)) + header + data.tobytes()


def unpack_array(frame: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`pack_array`; refuses frames whose length does not match."""
    frame = bytes(frame)
    if len(frame) < 2:
        raise FrameError("array frame is truncated.")
    (n,) = struct.unpack_from("<H", frame, 0)
    dtype, shape = unpack_array_header(frame[2 : 2 + n])
    data = frame[2 + n :]
    if len(data) != payload_bytes(dtype, shape):
        raise FrameError(
            f"array frame holds {len(data)} bytes, its header announces "
            f"{payload_bytes(dtype, shape)} ({dtype}, shape {shape})."
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
